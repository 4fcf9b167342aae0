//! Who may read through the S3 endpoint: access keys from `--s3-credentials` (each allowed
//! every dataset or a list of them), SigV4 checked by s3s against their secrets, and unsigned
//! requests only with `--s3-anonymous`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

/// Shortest secret key accepted (AWS's are 40 characters).
const MIN_SECRET_LEN: usize = 16;

/// One access key: its secret and the buckets (datasets) it may read; `None` for all.
struct Key {
    secret: String,
    buckets: Option<BTreeSet<String>>,
}

/// The configured access keys, and whether unsigned reads are allowed.
pub struct Keys {
    keys: HashMap<String, Key>,
    anonymous: bool,
    /// The server's datasets: any other bucket is answered NoSuchBucket, as S3 does.
    datasets: BTreeSet<String>,
}

/// A credentials file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--s3-credentials {file}{}: {reason}", crate::access::at_line(*.line))]
pub struct KeysError {
    pub file: String,
    /// 0 when the file itself is the trouble.
    pub line: usize,
    pub reason: String,
}

impl Keys {
    /// Read `ACCESS_KEY:SECRET_KEY[:BUCKET,…]` lines (`#` starts a comment line); every bucket named
    /// must be a dataset this server serves.
    pub fn load(
        path: Option<&Path>,
        anonymous: bool,
        datasets: &[String],
    ) -> Result<Keys, KeysError> {
        let Some(path) = path else {
            return Ok(Keys {
                keys: HashMap::new(),
                anonymous,
                datasets: datasets.iter().cloned().collect(),
            });
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| KeysError {
            file: file.clone(),
            line: 0,
            reason: format!("cannot read it: {e}"),
        })?;
        let mut keys = Keys::parse(&text, &file, datasets)?;
        keys.anonymous = anonymous;
        Ok(keys)
    }

    pub fn parse(text: &str, file: &str, datasets: &[String]) -> Result<Keys, KeysError> {
        let err = |line: usize, reason: String| KeysError {
            file: file.to_string(),
            line,
            reason,
        };
        let mut keys = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            // Comments are whole lines: a secret may hold any character but ':'.
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(3, ':');
            let (Some(access), Some(secret)) = (parts.next(), parts.next()) else {
                return Err(err(
                    i + 1,
                    "expected ACCESS_KEY:SECRET_KEY[:BUCKET,...]".into(),
                ));
            };
            let (access, secret) = (access.trim(), secret.trim());
            if access.is_empty() || access.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(err(
                    i + 1,
                    format!("access key {access:?} is empty or has spaces or '/'"),
                ));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(err(
                    i + 1,
                    format!("the secret key is shorter than {MIN_SECRET_LEN} characters"),
                ));
            }
            let buckets = match parts.next().map(str::trim) {
                None | Some("") => None,
                Some(list) => {
                    let mut set = BTreeSet::new();
                    for b in list.split(',').map(str::trim).filter(|b| !b.is_empty()) {
                        if !datasets.iter().any(|d| d == b) {
                            return Err(err(
                                i + 1,
                                format!(
                                    "bucket {b:?} is no dataset of this server ({})",
                                    datasets.join(", ")
                                ),
                            ));
                        }
                        set.insert(b.to_string());
                    }
                    Some(set)
                }
            };
            let key = Key {
                secret: secret.to_string(),
                buckets,
            };
            if keys.insert(access.to_string(), key).is_some() {
                return Err(err(i + 1, format!("access key {access:?} is given twice")));
            }
        }
        if keys.is_empty() {
            return Err(err(0, "no access keys in it".into()));
        }
        Ok(Keys {
            keys,
            anonymous: false,
            datasets: datasets.iter().cloned().collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn anonymous(&self) -> bool {
        self.anonymous
    }

    /// Whether `access_key` (`None`: an unsigned request) may read `bucket`.
    pub fn may_read(&self, access_key: Option<&str>, bucket: &str) -> bool {
        match access_key {
            None => self.anonymous,
            Some(k) => self
                .keys
                .get(k)
                .is_some_and(|key| key.buckets.as_ref().is_none_or(|b| b.contains(bucket))),
        }
    }
}

/// Secrets for s3s's signature checks.
pub struct Auth(pub std::sync::Arc<Keys>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.keys.get(access_key) {
            Some(key) => Ok(SecretKey::from(key.secret.as_str())),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "the access key is not one of this server's (--s3-credentials)"
            )),
        }
    }
}

/// Per-bucket permission, before the request's input is read; refusals counted as the
/// operations' own outcomes are.
pub struct Access(
    pub std::sync::Arc<Keys>,
    pub std::sync::Arc<crate::metrics::S3Metrics>,
);

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let who = cx.credentials().map(|c| c.access_key.as_str());
        let verdict = if who.is_none() && !self.0.anonymous {
            Err(s3_error!(
                AccessDenied,
                "anonymous reads are off on this server: sign requests with an access key"
            ))
        } else {
            match cx.s3_path() {
                // ListBuckets: each key sees its own buckets.
                S3Path::Root => Ok(()),
                S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => {
                    // No such dataset: the operation answers NoSuchBucket.
                    if !self.0.datasets.contains(bucket.as_ref()) || self.0.may_read(who, bucket) {
                        Ok(())
                    } else {
                        Err(s3_error!(
                            AccessDenied,
                            "this access key may not read bucket {bucket}"
                        ))
                    }
                }
            }
        };
        if verdict.is_err() {
            let op = cx.s3_op().name();
            self.1
                .requests
                .with_label_values(&[op, "AccessDenied"])
                .inc();
            tracing::info!(
                op,
                access_key = who.unwrap_or("(anonymous)"),
                "S3 request denied"
            );
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    fn datasets() -> Vec<String> {
        vec!["imagenet".into(), "ckpt".into()]
    }

    #[test]
    fn keys_with_and_without_bucket_lists() {
        let text =
            "# readers\nreader:0123456789abcdef0123:imagenet\nadmin:fedcba98#76543210/+fedc\n";
        let keys = Keys::parse(text, "f", &datasets()).unwrap();
        assert!(keys.may_read(Some("reader"), "imagenet"));
        assert!(!keys.may_read(Some("reader"), "ckpt"));
        assert!(keys.may_read(Some("admin"), "ckpt"));
        assert!(!keys.may_read(Some("stranger"), "imagenet"));
        assert!(
            !keys.may_read(None, "imagenet"),
            "anonymous is off unless asked for"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        for (text, says) in [
            ("reader\n", "line 1: expected ACCESS_KEY:SECRET_KEY"),
            ("reader:short\n", "line 1: the secret key is shorter"),
            (
                "a:0123456789abcdef0123\na:0123456789abcdef0123\n",
                "line 2: access key \"a\" is given twice",
            ),
            (
                "a:0123456789abcdef0123:nope\n",
                "bucket \"nope\" is no dataset",
            ),
            ("a b:0123456789abcdef0123\n", "has spaces"),
            ("# nothing\n", "no access keys"),
        ] {
            let e = Keys::parse(text, "creds", &datasets())
                .err()
                .expect(text)
                .to_string();
            assert!(e.starts_with("--s3-credentials creds"), "{e}");
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
