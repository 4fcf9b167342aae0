//! Data-plane authentication: the `--access-tokens` file and what one connection may read.
//!
//! The file holds one `TOKEN DATASET[,DATASET…]` or `TOKEN *` a line (`#` starts a comment).
//! Tokens are kept only as SHA-256 digests; a presented token is hashed and compared with every
//! digest in full, so neither the time taken nor the answer depends on how long a configured
//! token is or on where a comparison would first differ.
//!
//! A connection starts [`Access::Anonymous`] when no tokens are configured (then the listeners
//! are loopback-only unless `--insecure-allow-anonymous`), or waiting for an `Auth` frame;
//! afterwards every request is checked against the datasets its token grants.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::error::Error;

/// Shortest token accepted: guessing one must be out of reach.
pub const MIN_TOKEN_LEN: usize = 16;

/// What one token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Where the token is defined (`FILE line N`), for logs: never the token itself.
    pub label: String,
    pub datasets: Datasets,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datasets {
    All,
    Only(BTreeSet<String>),
}

impl Grant {
    pub fn allows(&self, dataset: &str) -> bool {
        match &self.datasets {
            Datasets::All => true,
            Datasets::Only(set) => set.contains(dataset),
        }
    }

    /// The datasets granted, as an `AuthOk` names them (`*` for all).
    pub fn names(&self) -> Vec<String> {
        match &self.datasets {
            Datasets::All => vec!["*".to_string()],
            Datasets::Only(set) => set.iter().cloned().collect(),
        }
    }
}

/// A line of a token file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file} line {line}: {reason}")]
pub struct TokenFileError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// The configured tokens, as digests.
pub struct AccessTokens {
    entries: Vec<([u8; 32], Arc<Grant>)>,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("tokens", &self.entries.len())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal without a data-dependent branch or early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl AccessTokens {
    /// Read a token file; every dataset it names must be one of `known`.
    pub fn load(path: &Path, known: &[String]) -> Result<AccessTokens, TokenFileError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError {
            file: file.clone(),
            line: 0,
            reason: format!("cannot read it: {e}"),
        })?;
        AccessTokens::parse(&text, &file, known)
    }

    /// Parse a token file's text (`file` names it in errors and labels).
    pub fn parse(text: &str, file: &str, known: &[String]) -> Result<AccessTokens, TokenFileError> {
        let err = |line: usize, reason: String| TokenFileError {
            file: file.to_string(),
            line,
            reason,
        };
        let mut entries: Vec<([u8; 32], Arc<Grant>)> = Vec::new();
        let mut seen: Vec<([u8; 32], usize)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut parts = content.split_whitespace();
            let token = parts.next().unwrap_or_default();
            let Some(scope) = parts.next() else {
                return Err(err(
                    line,
                    "a token without datasets: write `TOKEN DATASET[,DATASET…]` or `TOKEN *`"
                        .into(),
                ));
            };
            if parts.next().is_some() {
                return Err(err(
                    line,
                    "more than two fields: separate datasets with commas, not spaces".into(),
                ));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(err(
                    line,
                    format!(
                        "the token is shorter than {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"
                    ),
                ));
            }
            if token.len() > shardcache_proto::frame::MAX_TOKEN_LEN {
                return Err(err(
                    line,
                    format!(
                        "the token is longer than {} bytes",
                        shardcache_proto::frame::MAX_TOKEN_LEN
                    ),
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    line,
                    "the token has characters other than printable ASCII".into(),
                ));
            }
            let datasets = if scope == "*" {
                Datasets::All
            } else {
                let mut set = BTreeSet::new();
                for name in scope.split(',') {
                    if name.is_empty() {
                        return Err(err(line, "an empty dataset name".into()));
                    }
                    if !known.iter().any(|k| k == name) {
                        return Err(err(
                            line,
                            format!(
                                "unknown dataset {name:?} (configured: {})",
                                known.join(", ")
                            ),
                        ));
                    }
                    set.insert(name.to_string());
                }
                Datasets::Only(set)
            };
            let d = digest(token.as_bytes());
            if let Some((_, first)) = seen.iter().find(|(s, _)| s == &d) {
                return Err(err(
                    line,
                    format!("the same token as line {first}: give each token one line"),
                ));
            }
            seen.push((d, line));
            entries.push((
                d,
                Arc::new(Grant {
                    label: format!("{file} line {line}"),
                    datasets,
                }),
            ));
        }
        if entries.is_empty() {
            return Err(err(0, "no token in the file".into()));
        }
        Ok(AccessTokens { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The grant of a presented token, comparing it with every configured one.
    pub fn check(&self, token: &str) -> Option<Arc<Grant>> {
        let d = digest(token.as_bytes());
        let mut found = None;
        for (stored, grant) in &self.entries {
            if same(stored, &d) {
                found = Some(grant.clone());
            }
        }
        found
    }
}

/// Who may use the data plane.
#[derive(Debug, Clone)]
pub enum Policy {
    /// No tokens configured: every connection reads every dataset.
    Anonymous,
    Tokens(Arc<AccessTokens>),
}

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// The secret members prove they hold (`--cluster-secret-file`): HMAC-SHA256 over both sides'
/// fresh nonces and node ids, with a different label for each direction, so a proof is good for
/// one connection, one direction and one pair of nodes.
pub struct ClusterSecret {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// A cluster secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--cluster-secret-file {file}: {reason}")]
pub struct SecretError {
    pub file: String,
    pub reason: String,
}

/// A proof's length (HMAC-SHA256), also the nonces'.
pub const PROOF_LEN: usize = 32;

impl ClusterSecret {
    /// Read a secret file (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<ClusterSecret, SecretError> {
        let err = |reason: String| SecretError {
            file: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let secret = text.trim_ascii();
        if secret.len() < MIN_SECRET_LEN {
            return Err(err(format!(
                "the secret is shorter than {MIN_SECRET_LEN} bytes (e.g. `openssl rand -hex 32`)"
            )));
        }
        Ok(ClusterSecret::new(secret))
    }

    pub fn new(secret: &[u8]) -> ClusterSecret {
        ClusterSecret {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    /// A fresh random nonce.
    pub fn nonce() -> [u8; PROOF_LEN] {
        let mut n = [0u8; PROOF_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n)
            .expect("the system's random source works");
        n
    }

    fn message(label: &str, asker: &[u8], answerer: &[u8], ids: [&str; 2]) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        for part in [
            label.as_bytes(),
            asker,
            answerer,
            ids[0].as_bytes(),
            ids[1].as_bytes(),
        ] {
            m.extend_from_slice(&(part.len() as u32).to_be_bytes());
            m.extend_from_slice(part);
        }
        m
    }

    /// The answering member's proof: `asker`/`answerer` are the two nonces.
    pub fn answerer_proof(&self, asker: &[u8], answerer: &[u8], ids: [&str; 2]) -> Vec<u8> {
        let m = ClusterSecret::message("shardcache answerer", asker, answerer, ids);
        ring::hmac::sign(&self.key, &m).as_ref().to_vec()
    }

    /// The asking member's proof.
    pub fn asker_proof(&self, asker: &[u8], answerer: &[u8], ids: [&str; 2]) -> Vec<u8> {
        let m = ClusterSecret::message("shardcache asker", asker, answerer, ids);
        ring::hmac::sign(&self.key, &m).as_ref().to_vec()
    }

    /// Check a proof in constant time. `ids` is `[asker, answerer]` for both proofs.
    pub fn verify(
        &self,
        answerer_side: bool,
        nonces: [&[u8]; 2],
        ids: [&str; 2],
        proof: &[u8],
    ) -> bool {
        let label = if answerer_side {
            "shardcache answerer"
        } else {
            "shardcache asker"
        };
        let m = ClusterSecret::message(label, nonces[0], nonces[1], ids);
        ring::hmac::verify(&self.key, &m, proof).is_ok()
    }
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
}

impl Access {
    pub fn new(policy: &Policy, secret: Option<&Arc<ClusterSecret>>) -> Arc<Access> {
        Arc::new(Access {
            policy: policy.clone(),
            grant: OnceLock::new(),
            secret: secret.cloned(),
            peer: std::sync::Mutex::new(PeerHandshake::None),
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
            _ => Err(refused("the members' handshake was not followed")),
        }
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
            Policy::Tokens(tokens) => {
                tokens.check(token).ok_or_else(|| Error::Unauthenticated {
                    reason: "the token is not one of the server's --access-tokens".into(),
                })?
            }
        };
        Ok(self.grant.get_or_init(|| grant).clone())
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
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123";
    const B: &str = "fedcba9876543210fedc";

    fn known() -> Vec<String> {
        vec!["imagenet".into(), "laion".into()]
    }

    #[test]
    fn tokens_grant_their_datasets() {
        let text = format!("# readers\n{A} imagenet\n\n{B} *   # operators\n");
        let t = AccessTokens::parse(&text, "tokens", &known()).unwrap();
        assert_eq!(t.len(), 2);
        let a = t.check(A).unwrap();
        assert!(a.allows("imagenet") && !a.allows("laion"));
        assert_eq!(a.label, "tokens line 2");
        assert_eq!(a.names(), vec!["imagenet".to_string()]);
        let b = t.check(B).unwrap();
        assert!(b.allows("laion") && b.allows("imagenet"));
        assert_eq!(b.names(), vec!["*".to_string()]);
        assert!(t.check("0123456789abcdef012").is_none());
        assert!(t.check(&format!("{A}4")).is_none());
        assert!(t.check("").is_none());
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            (format!("{A}\n"), "line 1: a token without datasets"),
            (format!("{A} a b\n"), "more than two fields"),
            ("short imagenet\n".to_string(), "shorter than 16"),
            (format!("\n{A} nope\n"), "line 2: unknown dataset \"nope\""),
            (format!("{A} imagenet,\n"), "an empty dataset name"),
            (
                format!("{A} *\n{A} laion\n"),
                "line 2: the same token as line 1",
            ),
            ("# nothing\n".to_string(), "no token in the file"),
        ];
        for (text, want) in cases {
            let e = AccessTokens::parse(&text, "f", &known()).unwrap_err();
            assert!(e.to_string().contains(want), "{e} lacks {want}");
            assert!(!e.to_string().contains(A), "the token leaked: {e}");
        }
    }

    #[test]
    fn connections_authenticate_once_and_are_checked_per_dataset() {
        let t = AccessTokens::parse(&format!("{A} laion\n"), "f", &known()).unwrap();
        let policy = Policy::Tokens(Arc::new(t));
        let conn = Access::new(&policy, None);
        let e = conn.check("laion").unwrap_err();
        assert!(matches!(e, Error::Unauthenticated { .. }), "{e}");
        let e = conn.authenticate(B).unwrap_err();
        assert!(matches!(e, Error::Unauthenticated { .. }), "{e}");
        conn.authenticate(A).unwrap();
        conn.check("laion").unwrap();
        let e = conn.check("imagenet").unwrap_err();
        assert!(matches!(e, Error::Forbidden { .. }), "{e}");
        assert!(conn.authenticate(A).is_err());
        let open = Access::new(&Policy::Anonymous, None);
        open.check("imagenet").unwrap();
        open.require().unwrap();
        assert_eq!(open.authenticate(A).unwrap().names(), vec!["*".to_string()]);
        open.check("laion").unwrap();
    }

    #[test]
    fn members_prove_the_secret_both_ways() {
        let secret = Arc::new(ClusterSecret::new(b"0123456789abcdef-cluster"));
        let server = Access::new(&Policy::Anonymous, Some(&secret));
        // The asker's first step: its nonce.
        let mine = ClusterSecret::nonce();
        let PeerStep::Challenge { nonce, proof } =
            server.peer_step("node-b", "node-a", &mine, &[]).unwrap()
        else {
            panic!("a challenge first");
        };
        // The asker checks the answerer holds the secret too, for these nonces and ids only.
        assert!(secret.verify(true, [&mine, &nonce], ["node-a", "node-b"], &proof));
        assert!(!secret.verify(true, [&mine, &nonce], ["node-a", "node-c"], &proof));
        assert!(!secret.verify(false, [&mine, &nonce], ["node-a", "node-b"], &proof));
        let other = ClusterSecret::new(b"another-secret-0123456");
        assert!(!other.verify(true, [&mine, &nonce], ["node-a", "node-b"], &proof));
        assert!(server.member().is_none());
        let answer = secret.asker_proof(&mine, &nonce, ["node-a", "node-b"]);
        let PeerStep::Member(id) = server.peer_step("node-b", "node-a", &[], &answer).unwrap()
        else {
            panic!("a member");
        };
        assert_eq!(id, "node-a");
        assert_eq!(server.member().as_deref(), Some("node-a"));

        // Without the secret: refused, and the connection stays refused.
        let server = Access::new(&Policy::Anonymous, Some(&secret));
        let PeerStep::Challenge { nonce, .. } =
            server.peer_step("node-b", "x", &mine, &[]).unwrap()
        else {
            panic!("a challenge first");
        };
        let forged = other.asker_proof(&mine, &nonce, ["x", "node-b"]);
        let e = server.peer_step("node-b", "x", &[], &forged).unwrap_err();
        assert!(matches!(e, Error::Unauthenticated { .. }), "{e}");
        let honest = secret.asker_proof(&mine, &nonce, ["x", "node-b"]);
        assert!(server.peer_step("node-b", "x", &[], &honest).is_err());
        assert!(server.member().is_none());
        // A proof replayed on another connection (another nonce) fails.
        let third = Access::new(&Policy::Anonymous, Some(&secret));
        third.peer_step("node-b", "x", &mine, &[]).unwrap();
        assert!(third.peer_step("node-b", "x", &[], &honest).is_err());
        // Out of order: a proof first.
        let fourth = Access::new(&Policy::Anonymous, Some(&secret));
        assert!(fourth.peer_step("node-b", "x", &[], &honest).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_file_parses_or_fails_cleanly(text in "[ -~\n\t]{0,400}") {
            let _ = AccessTokens::parse(&text, "f", &known());
        }

        #[test]
        fn only_configured_tokens_pass(token in "[!-~]{0,40}") {
            let t = AccessTokens::parse(&format!("{A} *\n"), "f", &known()).unwrap();
            proptest::prop_assert_eq!(t.check(&token).is_some(), token == A);
        }
    }
}
