//! AWS credential sources object_store does not read by itself: shared config and credentials
//! files (profiles), web identity tokens exchanged at any STS endpoint (the one of an in-cluster
//! S3 server included), and container credentials from a full URI with or without an
//! authorization token.
//!
//! Each provider caches its credential until five minutes before it expires and refreshes it
//! under a lock, so a burst of requests at expiry asks once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::CredentialProvider;
use object_store::aws::AwsCredential;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::env::EnvSource;

/// One profile of the shared config and credentials files, both merged (the credentials
/// file's keys win, as in the AWS CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    /// Keys, lowercased.
    pub values: BTreeMap<String, String>,
    /// The file each key came from.
    pub files: BTreeMap<String, PathBuf>,
}

impl Profile {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The file `key` came from.
    pub fn file_of(&self, key: &str) -> PathBuf {
        self.files.get(key).cloned().unwrap_or_default()
    }
}

/// The shared config file (`AWS_CONFIG_FILE`, else `~/.aws/config`) and credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`).
pub fn profile_files(env: &dyn EnvSource) -> (Option<PathBuf>, Option<PathBuf>) {
    let home = env.var("HOME").map(PathBuf::from);
    let config = env
        .var("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
    let credentials = env
        .var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
    (config, credentials)
}

/// Profile `name` from the shared files; `None` when neither file has it. A file that exists
/// but cannot be read is an error (a mounted Secret with the wrong mode should not silently
/// fall back to other credentials).
pub fn load_profile(env: &dyn EnvSource, name: &str) -> Result<Option<Profile>, String> {
    let (config, credentials) = profile_files(env);
    let mut profile = Profile {
        name: name.to_string(),
        values: BTreeMap::new(),
        files: BTreeMap::new(),
    };
    let mut found = false;
    for (path, is_config) in [(config, true), (credentials, false)] {
        let Some(path) = path else { continue };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let sections = parse_ini(&text);
        let section = if is_config && name != "default" {
            format!("profile {name}")
        } else {
            name.to_string()
        };
        // The config file also accepts `[default]` written as `[profile default]`.
        let values = sections.get(&section).or_else(|| {
            (is_config && name == "default")
                .then(|| sections.get("profile default"))
                .flatten()
        });
        if let Some(values) = values {
            found = true;
            for (k, v) in values {
                profile.values.insert(k.clone(), v.clone());
                profile.files.insert(k.clone(), path.clone());
            }
        }
    }
    Ok(found.then_some(profile))
}

/// Sections of an INI file: `[name]` → key → value. Keys are lowercased; `#` and `;` start
/// comments; indented lines (nested settings such as `s3 =` blocks) are skipped.
pub fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            let v = v.trim();
            if v.is_empty() {
                continue; // the head of a nested block
            }
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.to_string());
        }
    }
    out
}

/// A cached credential and when to fetch a new one.
#[derive(Debug, Default)]
struct Cached {
    credential: Option<(Arc<AwsCredential>, Instant)>,
}

impl Cached {
    fn fresh(&self) -> Option<Arc<AwsCredential>> {
        self.credential
            .as_ref()
            .filter(|(_, refresh_at)| Instant::now() < *refresh_at)
            .map(|(c, _)| c.clone())
    }

    /// Keep `c` until five minutes before `expires_in` (at least a minute, at most an hour).
    fn keep(&mut self, c: Arc<AwsCredential>, expires_in: Option<Duration>) {
        let life = expires_in
            .map(|d| d.saturating_sub(Duration::from_secs(300)))
            .unwrap_or(Duration::from_secs(3600))
            .clamp(Duration::from_secs(60), Duration::from_secs(3600));
        self.credential = Some((c, Instant::now() + life));
    }
}

fn provider_error(what: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: what.into(),
    }
}

/// Time left until an ISO-8601 instant (`2026-12-01T08:00:00Z`).
fn until(expiration: &str) -> Option<Duration> {
    let at = chrono::DateTime::parse_from_rfc3339(expiration.trim()).ok()?;
    let left = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    left.to_std().ok()
}

/// `AssumeRoleWithWebIdentity`: a Kubernetes service-account token (re-read at every refresh,
/// the kubelet rotates it) exchanged for temporary credentials.
#[derive(Debug)]
pub struct WebIdentity {
    pub client: reqwest::Client,
    pub endpoint: String,
    pub role_arn: String,
    pub session_name: String,
    pub token_file: PathBuf,
    cache: Mutex<Cached>,
}

impl WebIdentity {
    pub fn new(
        client: reqwest::Client,
        endpoint: String,
        role_arn: String,
        session_name: String,
        token_file: PathBuf,
    ) -> WebIdentity {
        WebIdentity {
            client,
            endpoint,
            role_arn,
            session_name,
            token_file,
            cache: Mutex::new(Cached::default()),
        }
    }

    async fn fetch(&self) -> Result<(AwsCredential, Option<Duration>), String> {
        let token = read_token_file(&self.token_file, "AWS_WEB_IDENTITY_TOKEN_FILE")?;
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("DurationSeconds", "3600"),
            ("RoleArn", self.role_arn.as_str()),
            ("RoleSessionName", self.session_name.as_str()),
            ("WebIdentityToken", token.as_str()),
        ];
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = self
            .client
            .post(&self.endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/xml")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {}", self.endpoint, chain(&e)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("reading the answer of {}: {}", self.endpoint, chain(&e)))?;
        let tag = |t: &str| super::failure::xml_tag(&text, t);
        if !status.is_success() {
            return Err(format!(
                "{} answered HTTP {}{}{}",
                self.endpoint,
                status.as_u16(),
                tag("Code").map(|c| format!(", {c}")).unwrap_or_default(),
                tag("Message").map(|m| format!(": {m}")).unwrap_or_default(),
            ));
        }
        let (Some(key_id), Some(secret_key)) = (tag("AccessKeyId"), tag("SecretAccessKey")) else {
            return Err(format!(
                "{} answered without AccessKeyId and SecretAccessKey",
                self.endpoint
            ));
        };
        let expires = tag("Expiration").and_then(|e| until(&e));
        Ok((
            AwsCredential {
                key_id,
                secret_key,
                token: tag("SessionToken"),
            },
            expires,
        ))
    }
}

#[async_trait::async_trait]
impl CredentialProvider for WebIdentity {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.fresh() {
            return Ok(c);
        }
        let (c, expires) = self.fetch().await.map_err(|e| {
            provider_error(format!(
                "web identity credentials (role {}): {e}",
                self.role_arn
            ))
        })?;
        let c = Arc::new(c);
        cache.keep(c.clone(), expires);
        Ok(c)
    }
}

/// How a container credentials request is authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerAuth {
    None,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    Token(String),
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, re-read at every refresh (EKS Pod Identity).
    TokenFile(PathBuf),
}

/// Container credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI`): a local
/// endpoint that answers a JSON credential.
#[derive(Debug)]
pub struct Container {
    pub client: reqwest::Client,
    pub uri: String,
    pub auth: ContainerAuth,
    cache: Mutex<Cached>,
}

impl Container {
    pub fn new(client: reqwest::Client, uri: String, auth: ContainerAuth) -> Container {
        Container {
            client,
            uri,
            auth,
            cache: Mutex::new(Cached::default()),
        }
    }

    async fn fetch(&self) -> Result<(AwsCredential, Option<Duration>), String> {
        let mut req = self.client.get(&self.uri);
        match &self.auth {
            ContainerAuth::None => {}
            ContainerAuth::Token(t) => req = req.header("authorization", t.trim()),
            ContainerAuth::TokenFile(path) => {
                let t = read_token_file(path, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")?;
                req = req.header("authorization", t);
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {}", self.uri, chain(&e)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("reading the answer of {}: {}", self.uri, chain(&e)))?;
        if !status.is_success() {
            let line: String = text.chars().take(200).collect();
            return Err(format!(
                "{} answered HTTP {}: {}",
                self.uri,
                status.as_u16(),
                line.trim()
            ));
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} answered something that is not JSON: {e}", self.uri))?;
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let (Some(key_id), Some(secret_key)) = (field("AccessKeyId"), field("SecretAccessKey"))
        else {
            return Err(format!(
                "{} answered without AccessKeyId and SecretAccessKey",
                self.uri
            ));
        };
        let expires = field("Expiration").and_then(|e| until(&e));
        Ok((
            AwsCredential {
                key_id,
                secret_key,
                token: field("Token"),
            },
            expires,
        ))
    }
}

#[async_trait::async_trait]
impl CredentialProvider for Container {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.fresh() {
            return Ok(c);
        }
        let (c, expires) = self
            .fetch()
            .await
            .map_err(|e| provider_error(format!("container credentials: {e}")))?;
        let c = Arc::new(c);
        cache.keep(c.clone(), expires);
        Ok(c)
    }
}

/// Whether `uri` may serve container credentials over plain HTTP: the SDKs allow loopback and
/// the ECS and EKS link-local addresses only.
pub fn container_uri_allowed(uri: &url::Url) -> bool {
    if uri.scheme() == "https" {
        return true;
    }
    if uri.scheme() != "http" {
        return false;
    }
    match uri.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback()
                || ip.octets() == [169, 254, 170, 2]
                || ip.octets() == [169, 254, 170, 23]
        }
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip == "fd00:ec2::23".parse::<std::net::Ipv6Addr>().expect("valid")
        }
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

fn read_token_file(path: &Path, var: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {var} {}: {e}", path.display()))?;
    let t = text.trim().to_string();
    if t.is_empty() {
        return Err(format!("{var} {} is empty", path.display()));
    }
    Ok(t)
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        source = s.source();
    }
    out
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_keys_and_comments() {
        let text = "\
# comment
[default]
aws_access_key_id = AKIADEFAULT
Region=us-west-2
; another
[profile dev]
aws_access_key_id=AKIADEV
s3 =
    addressing_style = path
endpoint_url = http://127.0.0.1:9000
[  profile   spaced  ]
x = 1
";
        let s = parse_ini(text);
        assert_eq!(s["default"]["aws_access_key_id"], "AKIADEFAULT");
        assert_eq!(s["default"]["region"], "us-west-2");
        assert_eq!(s["profile dev"]["endpoint_url"], "http://127.0.0.1:9000");
        assert!(!s["profile dev"].contains_key("addressing_style"));
        assert!(!s["profile dev"].contains_key("s3"));
        assert_eq!(s["profile spaced"]["x"], "1");
    }

    #[test]
    fn profiles_merge_config_and_credentials_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let creds = dir.path().join("credentials");
        std::fs::write(
            &config,
            "[profile dev]\nregion = eu-west-1\naws_access_key_id = FROMCONFIG\n[default]\nregion = us-east-2\n",
        )
        .unwrap();
        std::fs::write(
            &creds,
            "[dev]\naws_access_key_id = FROMCREDS\naws_secret_access_key = s\n",
        )
        .unwrap();
        let env: BTreeMap<String, String> = [
            ("AWS_CONFIG_FILE", config.display().to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let dev = load_profile(&env, "dev").unwrap().unwrap();
        assert_eq!(dev.get("region"), Some("eu-west-1"));
        assert_eq!(dev.get("aws_access_key_id"), Some("FROMCREDS"));
        assert_eq!(dev.file_of("aws_secret_access_key"), creds);
        assert_eq!(dev.file_of("region"), config);
        let default = load_profile(&env, "default").unwrap().unwrap();
        assert_eq!(default.get("region"), Some("us-east-2"));
        assert_eq!(load_profile(&env, "nope").unwrap(), None);
    }

    #[test]
    fn container_uris_over_http_only_on_local_addresses() {
        let ok = |s: &str| container_uri_allowed(&url::Url::parse(s).unwrap());
        assert!(ok("http://127.0.0.1:8080/creds"));
        assert!(ok("http://169.254.170.2/v2/credentials/x"));
        assert!(ok("http://169.254.170.23/v1/credentials"));
        assert!(ok("http://[::1]:80/"));
        assert!(ok("https://creds.example/"));
        assert!(!ok("http://10.0.0.1/creds"));
        assert!(!ok("ftp://127.0.0.1/"));
    }

    #[test]
    fn expirations_and_encoding() {
        assert!(until("2000-01-01T00:00:00Z").is_none());
        let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let left = until(&later).unwrap();
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
        assert_eq!(url_encode("a b/c=d~"), "a%20b%2Fc%3Dd~");
    }
}
