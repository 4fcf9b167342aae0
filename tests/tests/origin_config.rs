//! Origins configured the way deployments configure them, against the real `shardcache` binary
//! with its own environment: each origin kind through the environment alone, the config file
//! alone, and both (the file's keys win key by key); AWS profiles, web identity, container
//! credentials, a private CA through `SSL_CERT_FILE` or `AWS_CA_BUNDLE`, proxies; settings that
//! cannot work refused at start with their name; `check-origin`; deadlines; `stale_if_error`.

use std::time::{Duration, Instant};

use shardcache_server::config::{DatasetConfig, Secret};
use shardcache_testsuite::creds::{CredentialServer, Issued};
use shardcache_testsuite::emulators::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, Moto};
use shardcache_testsuite::fault::{Fault, FaultProxy, Match};
use shardcache_testsuite::process::{ServeProcess, Shardcache};
use shardcache_testsuite::proxy::HttpProxy;
use shardcache_testsuite::{S3Origin, bytes_for, datasets_toml, test_ca};

const ACCESS: &str = "shardcache-test";
const SECRET: &str = "shardcache-test-secret";

/// Read `path` through the process and compare with `want`.
async fn reads(p: &ServeProcess, path: &str, want: &[u8]) {
    let client = p.client().await;
    match client.read(path, ..).await {
        Ok(got) => assert!(got[..] == want[..], "{path}: wrong bytes"),
        Err(e) => panic!("{path}: {e}\n--- log ---\n{}", p.log()),
    }
}

/// An s3s-fs origin with `bkt/ds/obj`.
async fn s3_with_object() -> (S3Origin, Vec<u8>) {
    let s3 = S3Origin::start(&["bkt"]).await;
    let data = bytes_for(21, 1_500_000);
    s3.put("bkt", "ds/obj", data.clone()).await;
    (s3, data)
}

fn s3_env(c: Shardcache, endpoint: &str) -> Shardcache {
    c.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
}

#[tokio::test]
async fn s3_through_the_environment_alone() {
    let (s3, data) = s3_with_object().await;
    // Exactly the README's way: AWS_* variables and a --dataset flag.
    let p = s3_env(Shardcache::new(), &s3.endpoint())
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    // The start-up log says the origin answers and how it signs, before serving.
    let log = p.log();
    let reachable = log.find("origin reachable").expect("origin check logged");
    assert!(
        reachable < log.find("shardcache serving").expect("serving"),
        "{log}"
    );
    assert!(log.contains("environment: AWS_ACCESS_KEY_ID"), "{log}");
    assert!(!log.contains(SECRET), "a secret in the log");

    // Without AWS_ALLOW_HTTP: the http:// endpoint says it.
    let p = Shardcache::new()
        .env("AWS_ENDPOINT_URL", s3.endpoint())
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
}

#[tokio::test]
async fn s3_through_the_file_alone() {
    let (s3, data) = s3_with_object().await;
    let p = Shardcache::new()
        .config(datasets_toml(&[s3.dataset("ds", "bkt", "ds")]))
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    assert!(
        p.log().contains("config file: datasets.ds.access_key_id"),
        "{}",
        p.log()
    );
}

#[tokio::test]
async fn s3_through_both_with_the_file_winning_key_by_key() {
    let (s3, data) = s3_with_object().await;
    let dead = shardcache_testsuite::closed_port().await;
    // The file names the endpoint; the environment's (more specific, even) point nowhere, and
    // the environment gives the credentials and region the file leaves out.
    let mut d = DatasetConfig::new("ds", "s3://bkt/ds/");
    d.endpoint = Some(s3.endpoint());
    let p = Shardcache::new()
        .config(datasets_toml(&[d]))
        .env("AWS_ENDPOINT_URL", format!("http://{dead}"))
        .env("AWS_ENDPOINT_URL_S3", format!("http://{dead}"))
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;

    // The file's key pair beats the environment's, which is wrong.
    let p = Shardcache::new()
        .config(datasets_toml(&[s3.dataset("ds", "bkt", "ds")]))
        .env("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONG")
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .env("AWS_SESSION_TOKEN", "wrong")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
}

#[tokio::test]
async fn moto_through_environment_file_and_both() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket("bkt").await;
    let data = bytes_for(22, 600_000);
    moto.put("bkt", "ds/obj", data.clone()).await;

    let p = Shardcache::new()
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "moto")
        .env("AWS_SECRET_ACCESS_KEY", "moto")
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;

    let mut d = DatasetConfig::new("ds", "s3://bkt/ds/");
    d.endpoint = Some(moto.endpoint());
    d.access_key_id = Some("moto".into());
    d.secret_access_key = Some(Secret("moto".into()));
    let p = Shardcache::new().config(datasets_toml(&[d])).serve().await;
    reads(&p, "ds/obj", &data).await;

    let mut d = DatasetConfig::new("ds", "s3://bkt/ds/");
    d.endpoint = Some(moto.endpoint());
    let p = Shardcache::new()
        .config(datasets_toml(&[d]))
        .env("AWS_ACCESS_KEY_ID", "moto")
        .env("AWS_SECRET_ACCESS_KEY", "moto")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
}

#[tokio::test]
async fn azure_through_environment_file_and_both() {
    let Some(az) = Azurite::start().await else {
        return;
    };
    az.create_container("ctr").await;
    let data = bytes_for(23, 700_000);
    az.put("ctr", "ds/obj", data.clone()).await;
    let blob_url = format!("http://{}", az.addr());

    // The emulator switch and the account key, from the environment only.
    let p = Shardcache::new()
        .env("AZURE_STORAGE_USE_EMULATOR", "true")
        .env("AZURITE_BLOB_STORAGE_URL", &blob_url)
        .env("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT)
        .env("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
        .arg("--dataset")
        .arg("ds=az://ctr/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;

    let mut d = DatasetConfig::new("ds", "az://ctr/ds/");
    d.endpoint = Some(az.endpoint());
    d.options
        .insert("azure_storage_account_name".into(), AZURITE_ACCOUNT.into());
    d.options
        .insert("azure_storage_account_key".into(), AZURITE_KEY.into());
    let p = Shardcache::new().config(datasets_toml(&[d])).serve().await;
    reads(&p, "ds/obj", &data).await;

    let mut d = DatasetConfig::new("ds", "az://ctr/ds/");
    d.endpoint = Some(az.endpoint());
    let p = Shardcache::new()
        .config(datasets_toml(&[d]))
        .env("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT)
        .env("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY)
        .env("AZURE_STORAGE_ENDPOINT", "http://127.0.0.1:9/nowhere")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
}

#[tokio::test]
async fn gcs_client_through_environment_file_and_both() {
    // object_store's GCS client reads through GCS's XML API, which is S3-compatible for
    // HEAD, ranged GET and ListObjectsV2: an anonymous s3s-fs stands in for it.
    let s3 = S3Origin::builder().bucket("bkt").anonymous().start().await;
    let data = bytes_for(24, 500_000);
    s3.put("bkt", "ds/obj", data.clone()).await;
    let p = Shardcache::new()
        .env("GOOGLE_BASE_URL", s3.endpoint())
        .env("GOOGLE_SKIP_SIGNATURE", "true")
        .arg("--dataset")
        .arg("ds=gs://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    let mut d = DatasetConfig::new("ds", "gs://bkt/ds/");
    d.endpoint = Some(s3.endpoint());
    d.skip_signature = Some(true);
    let p = Shardcache::new().config(datasets_toml(&[d])).serve().await;
    reads(&p, "ds/obj", &data).await;
    let mut d = DatasetConfig::new("ds", "gs://bkt/ds/");
    d.endpoint = Some(s3.endpoint());
    let p = Shardcache::new()
        .config(datasets_toml(&[d]))
        .env("GOOGLE_BASE_URL", "http://127.0.0.1:9")
        .env("GOOGLE_SKIP_SIGNATURE", "true")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
}

#[tokio::test]
async fn local_and_memory_through_environment_file_and_both() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes_for(25, 300_000);
    std::fs::write(dir.path().join("obj"), &data).unwrap();
    let url = format!("file://{}", dir.path().display());

    let p = Shardcache::new()
        .env("SHARDCACHE_DATASET", format!("ds={url},m=memory://"))
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    let e = p.client().await.read("m/none", ..).await.unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");

    let p = Shardcache::new()
        .config(datasets_toml(&[
            DatasetConfig::new("ds", &url),
            DatasetConfig::new("m", "memory://"),
        ]))
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;

    // A link out of the directory is refused by name; inside links are fine.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"not training data").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("obj"), dir.path().join("alias")).unwrap();
    reads(&p, "ds/alias", &data).await;
    let e = p.client().await.read("ds/escape", ..).await.unwrap_err();
    assert!(
        e.to_string().contains("leads out of the dataset directory"),
        "{e}"
    );
    let mut open = DatasetConfig::new("ds", &url);
    open.follow_symlinks = Some(true);
    let p = Shardcache::new()
        .config(datasets_toml(&[open]))
        .serve()
        .await;
    reads(&p, "ds/escape", b"not training data").await;

    // The file defines `ds`; the environment adds `m` and redefines nothing else.
    let mut d = DatasetConfig::new("ds", &url);
    d.immutable = true;
    let p = Shardcache::new()
        .config(datasets_toml(&[d]))
        .env("SHARDCACHE_DATASET", "m=memory://")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    let e = p.client().await.read("m/none", ..).await.unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}

#[tokio::test]
async fn a_shared_credentials_file_with_aws_profile() {
    let (s3, data) = s3_with_object().await;
    let c = Shardcache::new();
    let aws = c.home().join(".aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!("[default]\naws_access_key_id = AKIAWRONGDEFAULT\naws_secret_access_key = x\n\n[training]\naws_access_key_id = {ACCESS}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile training]\nregion = us-east-1\nendpoint_url = {}\n",
            s3.endpoint()
        ),
    )
    .unwrap();
    let p = c
        .env("AWS_PROFILE", "training")
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    assert!(p.log().contains("profile training"), "{}", p.log());
}

#[tokio::test]
async fn kubernetes_web_identity_through_an_sts_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path(), &["127.0.0.1", "localhost"]);
    let issued = Issued::new("irsa");
    let sts = CredentialServer::sts(
        "arn:aws:iam::123456789012:role/trainer",
        "projected-service-account-token",
        issued.clone(),
        Some((&cert, &key)),
    )
    .await;
    // The S3 server knows only the keys the STS hands out (and the harness's own).
    let s3 = S3Origin::builder()
        .bucket("bkt")
        .key(&issued.access_key, &issued.secret_key)
        .start()
        .await;
    let data = bytes_for(26, 400_000);
    s3.put("bkt", "ds/obj", data.clone()).await;
    let c = Shardcache::new();
    let token = c.dir().join("token");
    std::fs::write(&token, "projected-service-account-token\n").unwrap();
    let p = c
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/trainer")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string())
        .env("AWS_ENDPOINT_URL_STS", sts.url())
        .env("AWS_ENDPOINT_URL_S3", s3.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("SSL_CERT_FILE", ca.display().to_string())
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    assert!(sts.calls() >= 1, "the STS was asked");
    assert_eq!(sts.refused(), 0);
    assert!(p.log().contains("web identity"), "{}", p.log());
}

#[tokio::test]
async fn container_credentials_from_a_full_uri() {
    let issued = Issued::new("pod");
    let endpoint = CredentialServer::container(Some("Bearer pod-identity"), issued.clone()).await;
    let s3 = S3Origin::builder()
        .bucket("bkt")
        .key(&issued.access_key, &issued.secret_key)
        .start()
        .await;
    let data = bytes_for(27, 300_000);
    s3.put("bkt", "ds/obj", data.clone()).await;
    let c = Shardcache::new();
    let token = c.dir().join("eks-pod-identity-token");
    std::fs::write(&token, "Bearer pod-identity").unwrap();
    let p = c
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/v1/credentials", endpoint.url()),
        )
        .env(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token.display().to_string(),
        )
        .env("AWS_ENDPOINT_URL", s3.endpoint())
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    assert!(endpoint.calls() >= 1);
    assert_eq!(endpoint.refused(), 0);
}

#[tokio::test]
async fn https_with_a_private_ca_through_ssl_cert_file_or_aws_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path(), &["127.0.0.1", "localhost"]);
    let s3 = S3Origin::builder()
        .bucket("bkt")
        .tls(&cert, &key)
        .start()
        .await;
    let data = bytes_for(28, 500_000);
    s3.put("bkt", "ds/obj", data.clone()).await;
    for var in ["SSL_CERT_FILE", "AWS_CA_BUNDLE"] {
        let p = s3_env(Shardcache::new(), &s3.endpoint())
            .env(var, ca.display().to_string())
            .arg("--dataset")
            .arg("ds=s3://bkt/ds/")
            .serve()
            .await;
        reads(&p, "ds/obj", &data).await;
    }
    // Without the CA the certificate is not trusted, and check-origin says so.
    let out = s3_env(Shardcache::new(), &s3.endpoint())
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .run("check-origin")
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("FAILED"), "{}", out.stdout);
    assert!(
        out.stdout.to_lowercase().contains("certificate"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn proxies_from_https_proxy_http_proxy_and_no_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path(), &["127.0.0.1", "localhost"]);
    let https = S3Origin::builder()
        .bucket("bkt")
        .tls(&cert, &key)
        .start()
        .await;
    let data = bytes_for(29, 200_000);
    https.put("bkt", "ds/obj", data.clone()).await;
    let proxy = HttpProxy::start().await;

    let p = s3_env(Shardcache::new(), &https.endpoint())
        .env("SSL_CERT_FILE", ca.display().to_string())
        .env("HTTPS_PROXY", proxy.url())
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    assert!(proxy.tunnels() > 0, "HTTPS went through the proxy");

    let tunnels = proxy.tunnels();
    let p = s3_env(Shardcache::new(), &https.endpoint())
        .env("SSL_CERT_FILE", ca.display().to_string())
        .env("HTTPS_PROXY", proxy.url())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    assert_eq!(proxy.tunnels(), tunnels, "NO_PROXY bypasses the proxy");

    let (plain, data) = s3_with_object().await;
    let p = s3_env(Shardcache::new(), &plain.endpoint())
        .env("HTTP_PROXY", proxy.url())
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .serve()
        .await;
    reads(&p, "ds/obj", &data).await;
    assert!(proxy.forwarded() > 0, "plain HTTP went through the proxy");
}

#[tokio::test]
async fn settings_that_cannot_work_stop_the_start_with_their_name() {
    let (s3, _) = s3_with_object().await;
    let cases: Vec<(Shardcache, &str)> = vec![
        (
            s3_env(Shardcache::new(), &s3.endpoint()).env("AWS_PROFILE", "nope"),
            "AWS_PROFILE",
        ),
        (
            s3_env(Shardcache::new(), &s3.endpoint()).env("AWS_CA_BUNDLE", "/nonexistent/ca.pem"),
            "AWS_CA_BUNDLE",
        ),
        (
            s3_env(Shardcache::new(), &s3.endpoint()).env("AWS_ALLOW_HTTP", "false"),
            "AWS_ALLOW_HTTP",
        ),
        (
            s3_env(Shardcache::new(), &s3.endpoint()).env("HTTP_PROXY", "::not a url::"),
            "HTTP_PROXY",
        ),
        (
            Shardcache::new().env("AWS_EC2_METADATA_DISABLED", "true"),
            "no credentials",
        ),
    ];
    for (c, needle) in cases {
        let out = c
            .env("RUST_BACKTRACE", "1")
            .arg("--dataset")
            .arg("ds=s3://bkt/ds/")
            .run("serve")
            .await;
        assert_eq!(out.status.code(), Some(2), "{needle}: {out:?}");
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "one line: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("backtrace"), "{}", out.stderr);
    }
    let out = Shardcache::new()
        .arg("--dataset")
        .arg("x=/some/dir")
        .run("serve")
        .await;
    assert!(out.stderr.contains("file:///some/dir"), "{}", out.stderr);
}

#[tokio::test]
async fn check_origin_prints_what_works_with_the_effective_settings() {
    let (s3, _) = s3_with_object().await;
    let out = s3_env(Shardcache::new(), &s3.endpoint())
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .run("check-origin")
        .await;
    assert!(out.status.success(), "{out:?}");
    for needle in [
        "dataset ds",
        "environment: AWS_ENDPOINT_URL",
        "environment: AWS_ALLOW_HTTP",
        "LIST ok",
        "HEAD ok",
        "GET  ok",
        "all 1 origin(s) ok",
    ] {
        assert!(out.stdout.contains(needle), "{needle}:\n{}", out.stdout);
    }
    assert!(!out.stdout.contains(SECRET), "a secret in the output");

    let dead = shardcache_testsuite::closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let out = s3_env(Shardcache::new(), &format!("http://{dead}"))
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .arg("--dataset")
        .arg(format!("local=file://{}", dir.path().display()))
        .arg("--origin-retries")
        .arg("0")
        .run("check-origin")
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.contains("LIST FAILED"), "{}", out.stdout);
    assert!(out.stdout.contains("cannot connect"), "{}", out.stdout);
    assert!(
        out.stdout.contains("1 of 2 origin(s) FAILED"),
        "{}",
        out.stdout
    );
    let out = s3_env(Shardcache::new(), &s3.endpoint())
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .arg("nope")
        .run("check-origin")
        .await;
    assert!(
        out.stderr
            .contains("unknown dataset \"nope\"; configured: ds"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_frozen_origin_gives_an_error_in_seconds() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket("bkt").await;
    moto.put("bkt", "ds/obj", bytes_for(30, 100_000)).await;
    let p = Shardcache::new()
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "moto")
        .env("AWS_SECRET_ACCESS_KEY", "moto")
        .arg("--dataset")
        .arg("ds=s3://bkt/ds/")
        .arg("--origin-first-byte-timeout")
        .arg("1s")
        .arg("--origin-retries")
        .arg("2")
        .serve()
        .await;
    moto.freeze();
    let client = p.client().await;
    let started = Instant::now();
    let e = client.read("ds/obj", ..).await.unwrap_err();
    let took = started.elapsed();
    moto.thaw();
    assert!(
        e.to_string()
            .contains("no first byte within 1s, 3 attempt(s)"),
        "{e}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[tokio::test]
async fn stale_if_error_serves_cached_objects_while_the_origin_is_down() {
    let s3 = S3Origin::builder().bucket("bkt").anonymous().start().await;
    let proxy = FaultProxy::start(s3.addr()).await;
    let data = bytes_for(31, 2_000_000);
    s3.put("bkt", "ds/obj", data.clone()).await;
    let mut stale = s3.dataset("stale", "bkt", "ds");
    stale.endpoint = Some(proxy.endpoint());
    stale.metadata_ttl = Some(Duration::from_millis(500));
    stale.stale_if_error = Some(Duration::from_secs(60));
    let mut strict = stale.clone();
    strict.name = "strict".into();
    strict.stale_if_error = None;
    let p = Shardcache::new()
        .config(datasets_toml(&[stale, strict]))
        .arg("--origin-retries")
        .arg("0")
        .serve()
        .await;
    reads(&p, "stale/obj", &data).await;
    reads(&p, "strict/obj", &data).await;

    // The origin goes away; the TTL passes.
    proxy.always(Match::Any, Fault::Reset);
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..3 {
        reads(&p, "stale/obj", &data).await;
    }
    assert!(p.metric("shardcache_origin_stale_served_total").await >= 3.0);
    let log = p.log();
    assert_eq!(
        log.matches("serving the last known versions").count(),
        1,
        "logged once: {log}"
    );
    let e = p.client().await.read("strict/obj", ..).await.unwrap_err();
    assert!(e.to_string().contains("origin"), "{e}");

    // The origin is back: revalidated, logged.
    proxy.heal();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reads(&p, "stale/obj", &data).await;
    reads(&p, "strict/obj", &data).await;
    assert!(p.log().contains("origin answers again"), "{}", p.log());
}
