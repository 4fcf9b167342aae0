//! The cluster secret members prove to each other (`--cluster-secret-file`).

use std::path::Path;

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// The secret members prove they hold (`--cluster-secret-file`): HMAC-SHA256 over both sides'
/// fresh nonces and node ids, with a different label for each direction, so a proof is good for
/// one connection, one direction and one pair of nodes.
pub struct ClusterSecret {
    key: ring::hmac::Key,
    /// Nonces this node's answering side received from an asker with this node's own id: the
    /// last few, so the asking side can tell a connection to itself (an address of its own in
    /// the member list, as a headless Service lists every pod) from an impostor.
    reflected: std::sync::Mutex<std::collections::VecDeque<[u8; PROOF_LEN]>>,
}

/// Reflected nonces remembered (each is taken back at once by the asking side).
const REFLECTED_KEPT: usize = 16;

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
            reflected: Default::default(),
        }
    }

    /// The answering side saw `nonce` from an asker claiming this node's own id.
    pub fn note_reflected(&self, nonce: &[u8]) {
        let Ok(nonce) = <[u8; PROOF_LEN]>::try_from(nonce) else {
            return;
        };
        let mut kept = self.reflected.lock().expect("lock");
        if kept.len() == REFLECTED_KEPT {
            kept.pop_front();
        }
        kept.push_back(nonce);
    }

    /// Whether this node's own answering side received `nonce`, which only this node's asking
    /// side made and sent: the asker reached itself (taken back, so it answers once).
    pub fn was_reflected(&self, nonce: &[u8; PROOF_LEN]) -> bool {
        let mut kept = self.reflected.lock().expect("lock");
        match kept.iter().position(|n| n == nonce) {
            Some(i) => {
                kept.remove(i);
                true
            }
            None => false,
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
