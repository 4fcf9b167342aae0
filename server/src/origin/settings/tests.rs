use super::*;
use crate::origin::aws::ContainerAuth;
use std::collections::BTreeMap;
use std::time::Duration;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn s3(name: &str) -> DatasetConfig {
    DatasetConfig::new(name, "s3://bkt/ds/")
}

fn ok(d: &DatasetConfig, e: &BTreeMap<String, String>) -> OriginSettings {
    resolve(d, &OriginDefaults::default(), e).unwrap()
}

fn fails(d: &DatasetConfig, e: &BTreeMap<String, String>) -> String {
    resolve(d, &OriginDefaults::default(), e)
        .unwrap_err()
        .to_string()
}

fn value<'a>(s: &'a OriginSettings, key: &str) -> Option<(&'a str, &'a Source)> {
    s.get(key).map(|x| (x.value.as_str(), &x.source))
}

const KEYS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENT"),
    ("AWS_SECRET_ACCESS_KEY", "env-secret"),
];

#[test]
fn the_environment_alone_keeps_every_client_option() {
    // The README's way: a plain-http in-cluster S3 server configured by environment.
    let mut pairs = vec![
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_TIMEOUT", "7s"),
        ("HOME", "/nonexistent"),
    ];
    pairs.extend_from_slice(KEYS);
    let s = ok(&s3("ds"), &env(&pairs));
    assert_eq!(
        value(&s, "aws_endpoint"),
        Some((
            "http://127.0.0.1:9000",
            &Source::Env("AWS_ENDPOINT_URL".into())
        ))
    );
    assert_eq!(
        value(&s, "allow_http"),
        Some(("true", &Source::Env("AWS_ALLOW_HTTP".into())))
    );
    assert_eq!(
        value(&s, "timeout"),
        Some(("7s", &Source::Env("AWS_TIMEOUT".into()))),
        "the environment beats defaults"
    );
    assert_eq!(value(&s, "connect_timeout"), Some(("5s", &Source::Default)));
    match &s.credentials {
        Credentials::Static { key_id, token, .. } => {
            assert_eq!(key_id.value, "AKIAENVIRONMENT");
            assert_eq!(key_id.source, Source::Env("AWS_ACCESS_KEY_ID".into()));
            assert!(token.is_none());
        }
        other => panic!("{other:?}"),
    }
    // Credential variables are never passed through as store keys.
    assert!(s.get("aws_access_key_id").is_none());
    assert!(s.get("aws_secret_access_key").is_none());
}

#[test]
fn the_file_alone() {
    let mut d = s3("ds");
    d.endpoint = Some("http://127.0.0.1:9000".into());
    d.region = Some("eu-west-1".into());
    d.access_key_id = Some("AKIAFILEFILEFILE".into());
    d.secret_access_key = Some(crate::origin::Secret("file-secret".into()));
    let s = ok(&d, &env(&[]));
    assert_eq!(
        value(&s, "aws_endpoint").unwrap().1,
        &Source::File("datasets.ds.endpoint".into())
    );
    assert_eq!(value(&s, "aws_region").unwrap().0, "eu-west-1");
    // An http:// endpoint implies plain HTTP.
    assert!(matches!(
        value(&s, "allow_http"),
        Some(("true", Source::Implied(_)))
    ));
    assert!(
        matches!(&s.credentials, Credentials::Static { key_id, .. } if key_id.value == "AKIAFILEFILEFILE")
    );
}

#[test]
fn file_keys_win_key_by_key_and_the_rest_comes_from_the_environment() {
    let mut d = s3("ds");
    d.endpoint = Some("http://127.0.0.1:9000".into());
    d.access_key_id = Some("AKIAFILEFILEFILE".into());
    d.secret_access_key = Some(crate::origin::Secret("file-secret".into()));
    let mut pairs = vec![
        // A more specific variable must not beat the file's endpoint.
        ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:2"),
        ("AWS_DEFAULT_REGION", "ap-south-1"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_SESSION_TOKEN", "env-token"),
    ];
    pairs.extend_from_slice(KEYS);
    let s = ok(&d, &env(&pairs));
    assert_eq!(
        value(&s, "aws_endpoint").unwrap().0,
        "http://127.0.0.1:9000"
    );
    assert!(s.get("aws_endpoint_url_s3").is_none());
    assert_eq!(
        value(&s, "aws_default_region"),
        Some(("ap-south-1", &Source::Env("AWS_DEFAULT_REGION".into())))
    );
    assert_eq!(
        value(&s, "allow_http").unwrap().1,
        &Source::Env("AWS_ALLOW_HTTP".into())
    );
    // The file's key pair is one unit: the environment's session token is not mixed in.
    match &s.credentials {
        Credentials::Static { key_id, token, .. } => {
            assert_eq!(key_id.value, "AKIAFILEFILEFILE");
            assert!(token.is_none());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn within_the_environment_the_specific_endpoint_and_region_win() {
    let s = ok(
        &s3("ds"),
        &env(&[
            ("AWS_ENDPOINT", "http://127.0.0.1:1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:2"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:3"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
            ("AWS_REGION", "eu-north-1"),
            ("AWS_SKIP_SIGNATURE", "true"),
        ]),
    );
    assert_eq!(
        value(&s, "aws_endpoint_url_s3").unwrap().0,
        "http://127.0.0.1:3"
    );
    assert!(s.get("aws_endpoint").is_none());
    assert_eq!(value(&s, "aws_region").unwrap().0, "eu-north-1");
    assert!(s.get("aws_default_region").is_none());
    assert!(matches!(s.credentials, Credentials::Unsigned(_)));
}

#[test]
fn plain_http_refused_when_allow_http_says_no() {
    let mut d = s3("ds");
    d.endpoint = Some("http://127.0.0.1:9000".into());
    d.skip_signature = Some(true);
    let e = fails(&d, &env(&[("AWS_ALLOW_HTTP", "false")]));
    assert!(
        e.contains("plain HTTP") && e.contains("AWS_ALLOW_HTTP"),
        "{e}"
    );
    let e = fails(&d, &env(&[("AWS_ALLOW_HTTP", "maybe")]));
    assert!(e.contains("maybe"), "{e}");
    d.endpoint = Some("ftp://x".into());
    let e = fails(&d, &env(&[]));
    assert!(e.contains("http:// or https://"), "{e}");
}

fn profile_files(config: &str, creds: &str) -> (tempfile::TempDir, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config"), config).unwrap();
    std::fs::write(dir.path().join("credentials"), creds).unwrap();
    let vars = vec![
        (
            "AWS_CONFIG_FILE".to_string(),
            dir.path().join("config").display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            dir.path().join("credentials").display().to_string(),
        ),
    ];
    (dir, vars)
}

#[test]
fn profiles_by_name_below_the_environment() {
    let (_dir, files) = profile_files(
        "[profile dev]\nregion = eu-west-3\nendpoint_url = http://127.0.0.1:9100\n",
        "[dev]\naws_access_key_id = AKIAPROFILEDEV1\naws_secret_access_key = p\n[default]\naws_access_key_id = AKIADEFAULTXX\naws_secret_access_key = d\n",
    );
    let mut e: BTreeMap<String, String> = files.into_iter().collect();
    e.insert("AWS_PROFILE".into(), "dev".into());
    let s = ok(&s3("ds"), &e);
    assert_eq!(value(&s, "aws_region").unwrap().0, "eu-west-3");
    assert!(
        matches!(value(&s, "aws_endpoint").unwrap().1, Source::Profile { profile, .. } if profile == "dev")
    );
    assert!(
        matches!(&s.credentials, Credentials::Static { key_id, .. } if key_id.value == "AKIAPROFILEDEV1")
    );

    // The environment's keys and region beat the profile's.
    e.insert("AWS_ACCESS_KEY_ID".into(), "AKIAENVIRONMENT".into());
    e.insert("AWS_SECRET_ACCESS_KEY".into(), "x".into());
    e.insert("AWS_REGION".into(), "us-west-1".into());
    let s = ok(&s3("ds"), &e);
    assert_eq!(value(&s, "aws_region").unwrap().0, "us-west-1");
    assert!(
        matches!(&s.credentials, Credentials::Static { key_id, .. } if key_id.value == "AKIAENVIRONMENT")
    );

    // A profile the file names beats the environment's keys.
    let mut d = s3("ds");
    d.profile = Some("default".into());
    let s = ok(&d, &e);
    assert!(
        matches!(&s.credentials, Credentials::Static { key_id, .. } if key_id.value == "AKIADEFAULTXX")
    );

    // Without AWS_PROFILE the default profile is used when present.
    e.remove("AWS_PROFILE");
    e.remove("AWS_ACCESS_KEY_ID");
    e.remove("AWS_SECRET_ACCESS_KEY");
    let s = ok(&s3("ds"), &e);
    assert!(
        matches!(&s.credentials, Credentials::Static { key_id, .. } if key_id.value == "AKIADEFAULTXX")
    );

    e.insert("AWS_PROFILE".into(), "missing".into());
    let msg = fails(&s3("ds"), &e);
    assert!(
        msg.contains("\"missing\"") && msg.contains("AWS_PROFILE"),
        "{msg}"
    );
    assert!(msg.contains("credentials"), "{msg}");
}

#[test]
fn profiles_that_need_a_program_are_refused_by_name() {
    let (_dir, files) = profile_files("[profile sso]\nsso_session = corp\n", "");
    let mut e: BTreeMap<String, String> = files.into_iter().collect();
    e.insert("AWS_PROFILE".into(), "sso".into());
    let msg = fails(&s3("ds"), &e);
    assert!(
        msg.contains("sso_session") && msg.contains("export-credentials"),
        "{msg}"
    );
}

#[test]
fn web_identity_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJ.token").unwrap();
    let token_s = token.display().to_string();
    let base = [
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/trainer"),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_s.as_str()),
        ("AWS_REGION", "eu-central-1"),
    ];
    let s = ok(&s3("ds"), &env(&base));
    match &s.credentials {
        Credentials::WebIdentity {
            role_arn, endpoint, ..
        } => {
            assert_eq!(role_arn.source, Source::Env("AWS_ROLE_ARN".into()));
            assert_eq!(endpoint.value, "https://sts.eu-central-1.amazonaws.com");
        }
        other => panic!("{other:?}"),
    }
    let mut with_sts = base.to_vec();
    with_sts.push(("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"));
    let s = ok(&s3("ds"), &env(&with_sts));
    assert!(
        matches!(&s.credentials, Credentials::WebIdentity { endpoint, .. } if endpoint.value == "http://127.0.0.1:9000")
    );
    with_sts.push(("AWS_ENDPOINT_URL_STS", "https://127.0.0.1:9443"));
    let s = ok(&s3("ds"), &env(&with_sts));
    assert!(
        matches!(&s.credentials, Credentials::WebIdentity { endpoint, .. } if endpoint.value == "https://127.0.0.1:9443")
    );

    let msg = fails(
        &s3("ds"),
        &env(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/x"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token"),
        ]),
    );
    assert!(
        msg.contains("/nonexistent/token") && msg.contains("does not exist"),
        "{msg}"
    );
    let msg = fails(
        &s3("ds"),
        &env(&[("AWS_ROLE_ARN", "arn:aws:iam::1:role/x")]),
    );
    assert!(msg.contains("AWS_WEB_IDENTITY_TOKEN_FILE"), "{msg}");
}

#[test]
fn container_credentials_and_their_addresses() {
    let s = ok(
        &s3("ds"),
        &env(&[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:8080/creds",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer x"),
        ]),
    );
    assert!(
        matches!(&s.credentials, Credentials::Container { uri, auth: ContainerAuth::Token(_) } if uri.value == "http://127.0.0.1:8080/creds")
    );
    let s = ok(
        &s3("ds"),
        &env(&[(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/abc",
        )]),
    );
    assert!(
        matches!(&s.credentials, Credentials::Container { uri, auth: ContainerAuth::None } if uri.value == "http://169.254.170.2/v2/credentials/abc")
    );
    let msg = fails(
        &s3("ds"),
        &env(&[(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://10.1.2.3/creds",
        )]),
    );
    assert!(msg.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"), "{msg}");
}

#[test]
fn no_credentials_at_all() {
    let s = ok(
        &s3("ds"),
        &env(&[("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")]),
    );
    assert!(
        matches!(&s.credentials, Credentials::Instance { endpoint: Some(e) } if e.value == "http://127.0.0.1:1")
    );
    let msg = fails(&s3("ds"), &env(&[("AWS_EC2_METADATA_DISABLED", "true")]));
    assert!(
        msg.contains("no credentials") && msg.contains("AWS_ACCESS_KEY_ID"),
        "{msg}"
    );
    let msg = fails(&s3("ds"), &env(&[("AWS_ACCESS_KEY_ID", "AKIAONLY")]));
    assert!(msg.contains("without a secret"), "{msg}");
}

#[test]
fn keys_that_do_not_fit_the_origin_are_named() {
    let mut d = DatasetConfig::new("ds", "az://container/prefix/");
    d.region = Some("x".into());
    let msg = fails(&d, &env(&[]));
    assert!(
        msg.contains("datasets.ds.region") && msg.contains("s3://"),
        "{msg}"
    );
    let mut d = DatasetConfig::new("ds", "file:///tmp");
    d.endpoint = Some("http://x".into());
    let msg = fails(&d, &env(&[]));
    assert!(msg.contains("datasets.ds.endpoint"), "{msg}");
    let mut d = s3("ds");
    d.skip_signature = Some(true);
    d.options.insert("no_such_option".into(), "1".into());
    let msg = fails(&d, &env(&[]));
    assert!(msg.contains("datasets.ds.options.no_such_option"), "{msg}");
    let mut d = s3("ds");
    d.options.insert("aws_secret_access_key".into(), "x".into());
    let msg = fails(&d, &env(&[]));
    assert!(msg.contains("credentials are set with"), "{msg}");
    let mut d = s3("ds");
    d.skip_signature = Some(true);
    d.options.insert("aws_request_payer".into(), "true".into());
    d.options.insert("http2_only".into(), "true".into());
    let s = ok(&d, &env(&[]));
    assert_eq!(value(&s, "aws_request_payer").unwrap().0, "true");
    assert_eq!(value(&s, "http2_only").unwrap().0, "true");
}

#[test]
fn a_directory_instead_of_a_url_gets_a_hint() {
    let msg = fails(&DatasetConfig::new("x", "/some/dir"), &env(&[]));
    assert!(msg.contains("file:///some/dir"), "{msg}");
    let msg = fails(&DatasetConfig::new("x", "ftp://h/x"), &env(&[]));
    assert!(msg.contains("unsupported scheme"), "{msg}");
}

#[test]
fn proxies_from_the_environment_and_the_file() {
    let mut d = s3("ds");
    d.skip_signature = Some(true);
    let s = ok(
        &d,
        &env(&[
            ("HTTPS_PROXY", "http://user:pw@127.0.0.1:3128"),
            ("HTTP_PROXY", "http://127.0.0.1:3129"),
        ]),
    );
    let p = s.proxy.as_ref().unwrap();
    assert_eq!(p.source, Source::Env("HTTPS_PROXY".into()));
    assert!(!p.shown().contains("pw"), "{}", p.shown());
    d.endpoint = Some("http://127.0.0.1:9000".into());
    let s = ok(
        &d,
        &env(&[
            ("HTTPS_PROXY", "http://127.0.0.1:3128"),
            ("http_proxy", "http://127.0.0.1:3129"),
        ]),
    );
    assert_eq!(s.proxy.as_ref().unwrap().value, "http://127.0.0.1:3129");
    d.proxy_url = Some("http://127.0.0.1:3000".into());
    let s = ok(&d, &env(&[("NO_PROXY", "127.0.0.1,localhost")]));
    assert_eq!(
        s.proxy.as_ref().unwrap().source,
        Source::File("datasets.ds.proxy_url".into())
    );
    assert_eq!(
        value(&s, "proxy_excludes").unwrap().0,
        "127.0.0.1,localhost"
    );
    d.proxy_url = Some("not a url".into());
    let msg = fails(&d, &env(&[]));
    assert!(msg.contains("proxy"), "{msg}");
}

#[test]
fn trust_roots_that_do_not_exist_fail_at_start() {
    let mut d = s3("ds");
    d.skip_signature = Some(true);
    let msg = fails(&d, &env(&[("AWS_CA_BUNDLE", "/nonexistent/ca.pem")]));
    assert!(
        msg.contains("AWS_CA_BUNDLE") && msg.contains("/nonexistent/ca.pem"),
        "{msg}"
    );
    let msg = fails(&d, &env(&[("SSL_CERT_FILE", "/nonexistent/ca.pem")]));
    assert!(msg.contains("SSL_CERT_FILE"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    d.ca_bundle = Some(junk);
    let msg = fails(&d, &env(&[]));
    assert!(
        msg.contains("datasets.ds.ca_bundle") && msg.contains("no PEM"),
        "{msg}"
    );
}

#[test]
fn secrets_never_show() {
    let mut d = s3("ds");
    d.access_key_id = Some("AKIAFILEFILEFILE".into());
    d.secret_access_key = Some(crate::origin::Secret("hunter2-secret".into()));
    d.session_token = Some(crate::origin::Secret("hunter3-token".into()));
    let s = ok(&d, &env(&[]));
    let text = format!("{:?} {:?} {}", s, s.describe(), s.credentials);
    for secret in ["hunter2", "hunter3", "AKIAFILEFILEFILE"] {
        assert!(!text.contains(secret), "{secret} shows in {text}");
    }
    assert!(text.contains("AKIA…"), "{text}");
    assert_eq!(redact("azure_storage_account_key", "k"), "<redacted>");
    assert_eq!(
        redact("aws_web_identity_token_file", "/var/run/t"),
        "/var/run/t"
    );
}

#[test]
fn timeouts_per_dataset_over_the_server_defaults() {
    let mut d = DatasetConfig::new("ds", "memory://");
    let s = ok(&d, &env(&[]));
    assert_eq!(s.first_byte_timeout, Duration::from_secs(5));
    assert_eq!(s.request_timeout, Duration::from_secs(30));
    d.first_byte_timeout = Some(Duration::from_secs(2));
    d.request_timeout = Some(Duration::from_secs(10));
    d.stale_if_error = Some(Duration::from_secs(600));
    let s = ok(&d, &env(&[]));
    assert_eq!(
        (s.first_byte_timeout, s.request_timeout, s.stale_if_error),
        (
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::from_secs(600)
        )
    );
    d.first_byte_timeout = Some(Duration::from_secs(20));
    let msg = fails(&d, &env(&[]));
    assert!(msg.contains("first_byte_timeout"), "{msg}");
}

#[test]
fn azure_and_gcs_read_their_own_variables() {
    let d = DatasetConfig::new("a", "az://container/prefix/");
    let s = ok(
        &d,
        &env(&[
            ("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "a2V5"),
            ("AWS_REGION", "ignored"),
        ]),
    );
    assert_eq!(
        value(&s, "azure_storage_account_name").unwrap().0,
        "devstoreaccount1"
    );
    assert!(s.get("aws_region").is_none());
    assert!(
        s.credentials.to_string().contains("account key"),
        "{}",
        s.credentials
    );
    let d = DatasetConfig::new("g", "gs://bucket/");
    let s = ok(&d, &env(&[("GOOGLE_SERVICE_ACCOUNT", "/sa.json")]));
    assert!(
        s.credentials.to_string().contains("service account"),
        "{}",
        s.credentials
    );
}
