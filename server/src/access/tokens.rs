//! The `--access-tokens` file: tokens kept as digests, and what each grants.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

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
#[error("--access-tokens {file}{}: {reason}", at_line(*.line))]
pub struct TokenFileError {
    pub file: String,
    /// 0 when the file itself is the trouble.
    pub line: usize,
    pub reason: String,
}

/// ` line N` for an error in a file's line N; nothing for line 0 (the file itself).
pub fn at_line(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" line {line}")
    }
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

/// Whether two secrets are equal, compared as SHA-256 digests without an early exit: the time
/// taken says nothing about their lengths or where they differ.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    same(&digest(a), &digest(b))
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
