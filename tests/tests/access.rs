//! Data-plane authentication with real `shardcache` processes: access tokens over TCP and QUIC,
//! per-dataset grants, peers reading from each other under tokens, and the refusal to listen
//! off loopback without authentication.

use std::process::Command;
use std::time::Duration;

use shardcache_client::{Client, ClientOptions};
use shardcache_proto::ErrorCode;
use shardcache_testsuite::{S3Origin, TestCluster, free_port, put_objects, server_binary, test_ca};

const BLOCK: usize = 256 * 1024;
const READER: &str = "reader-3f7a9c1e5b2d4086";
const OTHER: &str = "other-9e8d7c6b5a493827";

fn options(token: Option<&str>) -> ClientOptions {
    ClientOptions {
        token: token.map(str::to_string),
        connections: 1,
        retries: 0,
        insecure_skip_verify: true,
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_every_dataset_across_a_cluster() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = put_objects(&origin, "bucket", "train", 8, 100, |_| 3 * BLOCK + 17).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# test tokens\n{READER} ds\n{OTHER} other\n"),
    )
    .unwrap();
    let mut other = origin.dataset("other", "bucket", "train");
    other.block_size = Some(BLOCK as u64);
    let cluster = TestCluster::over(&origin, BLOCK)
        .dataset(other.clone())
        .nodes(2)
        .arg("--access-tokens", tokens.to_str().unwrap())
        .start_converged()
        .await;

    // Without a token: who the server is, and nothing else.
    let anonymous = Client::connect_with(&cluster.endpoint(0), options(None))
        .await
        .unwrap();
    assert!(anonymous.server_info().await.is_ok());
    let e = anonymous.read("ds/obj-000", ..).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    assert!(e.to_string().contains("requires an access token"), "{e}");

    // An unknown token is refused at connect, naming what is wrong.
    let e = Client::connect_with(
        &cluster.endpoint(0),
        options(Some("reader-3f7a9c1e5b2d4087")),
    )
    .await
    .err()
    .expect("an unknown token is refused");
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    assert!(e.to_string().contains("--access-tokens"), "{e}");
    assert!(!e.to_string().contains("reader-"), "the token leaked: {e}");

    // The reader's token reads its dataset through either node (the other node's blocks come
    // over the peer path, which tokens do not gate), and only its dataset.
    for node in 0..2 {
        let c = Client::connect_with(&cluster.endpoint(node), options(Some(READER)))
            .await
            .unwrap();
        for (i, want) in objects.iter().enumerate() {
            let got = c.read(&format!("ds/obj-{i:03}"), ..).await.unwrap();
            assert!(got[..] == want[..], "node {node} obj-{i:03}");
        }
        let e = c.read("other/obj-000", ..).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
        assert!(e.to_string().contains("\"other\""), "{e}");
        let e = c
            .prefetch(&["other/obj-001".to_string()])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    }

    let denied = cluster.metric(0, "shardcache_denied_requests_total").await;
    assert!(denied >= 3.0, "denied {denied}");
    assert_eq!(
        cluster.metric(0, "shardcache_auth_failures_total").await,
        1.0
    );

    // QUIC: the token authenticates the connection, whichever stream carries later requests.
    let quic = free_port();
    let single = TestCluster::over(&origin, BLOCK)
        .dataset(other)
        .nodes(1)
        .arg("--access-tokens", tokens.to_str().unwrap())
        .arg("--quic-listen", &format!("127.0.0.1:{quic}"))
        .arg("--insecure-dev-tls", "true")
        .start()
        .await;
    let quic_endpoint = format!("quic://127.0.0.1:{quic}");
    let c = Client::connect_with(&quic_endpoint, options(Some(OTHER)))
        .await
        .unwrap();
    let got = c.read("other/obj-002", ..).await.unwrap();
    assert!(got[..] == objects[2][..]);
    let e = c.stat("ds/obj-002").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    let anonymous = Client::connect_with(&quic_endpoint, options(None))
        .await
        .unwrap();
    let e = anonymous.stat("other/obj-002").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");
    drop(single);
}

/// `shardcache serve` with `args`, which must refuse to start; its stderr.
fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(server_binary())
        .arg("serve")
        .args(args)
        .args(["--dataset", &format!("ds=file://{}", dir.path().display())])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn listening_off_loopback_without_authentication_is_refused_naming_the_flags() {
    // Refused before anything is bound, so no port off loopback is ever opened.
    let e = refused(&["--listen", "0.0.0.0:7070", "--control-listen", "off"]);
    assert!(e.contains("--listen 0.0.0.0:7070"), "{e}");
    assert!(e.contains("--access-tokens FILE"), "{e}");
    assert!(e.contains("--insecure-allow-anonymous"), "{e}");
    let e = refused(&[
        "--quic-listen",
        "[::]:7071",
        "--insecure-dev-tls",
        "--control-listen",
        "off",
    ]);
    assert!(e.contains("--quic-listen [::]:7071"), "{e}");
    let e = refused(&["--control-listen", "0.0.0.0:7072"]);
    assert!(e.contains("--control-token-file FILE"), "{e}");
    // Peers without a way to prove membership.
    let e = refused(&["--peers", "127.0.0.1:7999"]);
    assert!(
        e.contains("--cluster-secret-file FILE") && e.contains("--tls-ca"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("secret");
    std::fs::write(&short, "tiny\n").unwrap();
    let e = refused(&[
        "--peers",
        "127.0.0.1:7999",
        "--cluster-secret-file",
        short.to_str().unwrap(),
    ]);
    assert!(e.contains("shorter than 16 bytes"), "{e}");
    assert!(!e.contains("tiny"), "the secret leaked: {e}");
    // A token file that cannot be used is named with its line.
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "short ds\n").unwrap();
    let e = refused(&["--access-tokens", tokens.to_str().unwrap()]);
    assert!(e.contains("line 1") && e.contains("shorter than 16"), "{e}");
    std::fs::write(&tokens, format!("{READER} nope\n")).unwrap();
    let e = refused(&["--access-tokens", tokens.to_str().unwrap()]);
    assert!(e.contains("unknown dataset \"nope\""), "{e}");
    assert!(!e.contains(READER), "the token leaked: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_server_says_it_serves_loopback_only() {
    let origin = S3Origin::start(&["bucket"]).await;
    let cluster = TestCluster::over(&origin, BLOCK).nodes(1).start().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = cluster.nodes[0].log();
        if log.contains(
            "data plane without access tokens: serving loopback and the local socket only",
        ) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_port_speaks_tls_to_tls_clients_and_plain_to_the_others() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = put_objects(&origin, "bucket", "train", 2, 100, |_| 3 * BLOCK + 5).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path(), &["localhost", "127.0.0.1"]);
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{READER} ds\n")).unwrap();
    let cluster = TestCluster::over(&origin, BLOCK)
        .nodes(1)
        .arg("--access-tokens", tokens.to_str().unwrap())
        .arg("--tls-cert", cert.to_str().unwrap())
        .arg("--tls-key", key.to_str().unwrap())
        .start()
        .await;
    let addr = cluster.endpoint(0);
    let trusted = ClientOptions {
        tls_ca: Some(ca.clone()),
        insecure_skip_verify: false,
        ..options(Some(READER))
    };
    // By address and by name, the certificate verified against the CA.
    for endpoint in [
        format!("tls://{addr}"),
        format!("tls://localhost:{}", addr.rsplit_once(':').unwrap().1),
    ] {
        let c = Client::connect_with(&endpoint, trusted.clone())
            .await
            .unwrap();
        let got = c.read("ds/obj-001", ..).await.unwrap();
        assert!(got[..] == objects[1][..], "{endpoint}");
    }
    // A client that trusts another CA is refused in the handshake, saying so.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = test_ca(other.path(), &["localhost"]);
    let e = Client::connect_with(
        &format!("tls://{addr}"),
        ClientOptions {
            tls_ca: Some(other_ca),
            ..trusted.clone()
        },
    )
    .await
    .err()
    .expect("an untrusted certificate is refused");
    assert!(e.to_string().contains("tls handshake failed"), "{e}");
    // Plain TCP on the same port still works (loopback readers, older clients).
    let plain = Client::connect_with(&addr, options(Some(READER)))
        .await
        .unwrap();
    assert!(plain.read("ds/obj-000", ..).await.unwrap()[..] == objects[0][..]);
}

/// Tokens and the cluster secret configured every way the README documents them (flag,
/// environment variable, TOML key), on the binary as deployments start it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_the_cluster_secret_work_from_flags_environment_and_file() {
    use shardcache_testsuite::process::Shardcache;
    for way in ["flag", "env", "toml"] {
        let s = Shardcache::new();
        let data = s.dir().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("a.bin"), b"guarded").unwrap();
        let tokens = s.dir().join("tokens");
        std::fs::write(&tokens, format!("{READER} ds\n")).unwrap();
        let secret = s.dir().join("secret");
        std::fs::write(&secret, "cluster-secret-0123456789\n").unwrap();
        let (tokens, secret) = (tokens.display().to_string(), secret.display().to_string());
        let dataset = format!("ds=file://{}", data.display());
        // A peer nobody answers at: the secret is what lets the node start with peers.
        let peer = format!("127.0.0.1:{}", free_port());
        let s = match way {
            "flag" => s
                .arg("--dataset")
                .arg(dataset)
                .arg("--peers")
                .arg(peer)
                .arg("--access-tokens")
                .arg(tokens)
                .arg("--cluster-secret-file")
                .arg(secret),
            "env" => s
                .env("SHARDCACHE_DATASET", dataset)
                .env("SHARDCACHE_PEERS", peer)
                .env("SHARDCACHE_ACCESS_TOKENS", tokens)
                .env("SHARDCACHE_CLUSTER_SECRET_FILE", secret),
            _ => s.arg("--dataset").arg(dataset).config(format!(
                "peers = [{peer:?}]\naccess_tokens = {tokens:?}\ncluster_secret_file = {secret:?}\n"
            )),
        };
        let p = s.serve().await;
        let addr = p.data.to_string();
        let anonymous = Client::connect_with(&addr, options(None)).await.unwrap();
        let e = anonymous.read("ds/a.bin", ..).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{way}: {e}");
        let c = Client::connect_with(&addr, options(Some(READER)))
            .await
            .unwrap();
        assert_eq!(
            &c.read("ds/a.bin", ..).await.unwrap()[..],
            b"guarded",
            "{way}"
        );
    }
}
