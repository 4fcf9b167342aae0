//! The control plane on a cluster of real processes: warm, list, stat, evict, members, tokens,
//! manifests, and a warm interrupted and run again.

use std::sync::Arc;

use shardcache_client::control_proto::WarmRequest;
use shardcache_client::{Client, ControlClient, ErrorCode, Manifest};
use shardcache_testsuite::{S3Origin, TestCluster, bytes_for, crc32c, put_objects, test_ca};

const KIB: usize = 1 << 10;
const BLOCK: usize = 64 * KIB;

/// Objects of 1 to 3 blocks, most not a whole number of blocks.
async fn dataset(origin: &S3Origin, objects: usize) -> Arc<Vec<Vec<u8>>> {
    put_objects(origin, "bucket", "train", objects, 700, |i| {
        BLOCK + (i % 3) * 50 * KIB + i
    })
    .await
}

fn blocks(objects: &[Vec<u8>]) -> u64 {
    objects.iter().map(|o| o.len().div_ceil(BLOCK) as u64).sum()
}

async fn cluster(origin: &S3Origin, extra: &[(&str, &str)]) -> TestCluster {
    let mut b = TestCluster::over(origin, BLOCK);
    for (flag, value) in extra {
        b = b.arg(flag, value);
    }
    b.start_converged().await
}

/// Run a warm to its end; the last progress message.
async fn warm(
    ctl: &ControlClient,
    path: &str,
    manifest: bool,
) -> shardcache_client::control_proto::WarmProgress {
    warm_with(
        ctl,
        WarmRequest {
            path: path.into(),
            replicas: 1,
            manifest,
            ..WarmRequest::default()
        },
    )
    .await
}

/// Run a warm to its end, asserting no failure; the last progress message.
async fn warm_with(
    ctl: &ControlClient,
    req: WarmRequest,
) -> shardcache_client::control_proto::WarmProgress {
    let mut stream = ctl.warm(req).await.unwrap();
    let mut last = None;
    while let Some(p) = stream.message().await.unwrap() {
        assert!(p.failures.is_empty(), "warm failures: {:?}", p.failures);
        let done = p.done;
        last = Some(p);
        if done {
            break;
        }
    }
    let last = last.expect("a progress report");
    assert!(last.done);
    last
}

/// Read every object through every node; all bytes checked.
async fn epoch(cluster: &TestCluster, objects: &Arc<Vec<Vec<u8>>>) {
    let mut tasks = Vec::new();
    for n in cluster.running() {
        let client = Client::connect(&cluster.endpoint(n)).await.unwrap();
        let objects = objects.clone();
        tasks.push(tokio::spawn(async move {
            for (i, want) in objects.iter().enumerate() {
                let got = client.read(&format!("ds/obj-{i:03}"), ..).await.unwrap();
                assert!(got[..] == want[..], "node {n} obj-{i:03}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_prefix_is_read_without_the_origin() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 200).await;
    let cluster = cluster(&origin, &[]).await;
    let ctl = ControlClient::connect(&cluster.control_endpoint(1), None, None)
        .await
        .unwrap();

    let first = warm(&ctl, "ds/obj-", false).await;
    let total: u64 = objects.iter().map(|o| o.len() as u64).sum();
    assert_eq!(first.objects_total, 200);
    assert_eq!(first.objects_done, 200);
    assert_eq!(first.bytes_total, total);
    assert_eq!(first.bytes_done, total);
    assert_eq!(first.bytes_skipped, 0);
    assert_eq!(first.nodes.iter().map(|n| n.bytes).sum::<u64>(), total);
    assert_eq!(
        first.nodes.len(),
        3,
        "blocks spread over the nodes: {:?}",
        first.nodes
    );
    let counts = origin.total();
    assert_eq!(counts.gets, blocks(&objects), "one GET per block");
    assert_eq!(counts.get_bytes, total);

    // An epoch of reads through every node: no origin GET.
    epoch(&cluster, &objects).await;
    assert_eq!(
        origin.total().gets,
        counts.gets,
        "reads after a warm hit the cache"
    );

    // A second warm finds everything cached.
    let second = warm(&ctl, "ds/", false).await;
    assert_eq!(second.bytes_skipped, total);
    assert_eq!(origin.total().gets, counts.gets);

    // ls and stat see the cached blocks; evict drops them everywhere.
    let ls = ctl.list("ds/obj-00").await.unwrap();
    assert_eq!(ls.objects.len(), 10);
    assert!(
        ls.objects.iter().all(|o| o.cached_fraction == 1.0),
        "{ls:?}"
    );
    let stat = ctl.stat("ds/obj-002").await.unwrap();
    assert_eq!(stat.size, objects[2].len() as u64);
    assert_eq!(stat.blocks.len(), objects[2].len().div_ceil(BLOCK));
    for b in &stat.blocks {
        assert!(
            b.holders.contains(&b.owner),
            "the owner holds its block: {b:?}"
        );
    }
    let evicted = ctl.evict("ds/obj-00").await.unwrap();
    assert_eq!(evicted.objects, 10);
    assert!(evicted.blocks >= 10, "{evicted:?}");
    assert!(evicted.failures.is_empty());
    let ls = ctl.list("ds/obj-00").await.unwrap();
    assert!(
        ls.objects.iter().all(|o| o.cached_fraction == 0.0),
        "{ls:?}"
    );

    let members = ctl.members().await.unwrap();
    assert_eq!(members.members.len(), 3);
    assert_eq!(
        members.members.iter().filter(|m| m.state == "up").count(),
        2
    );
    assert!(members.members.iter().all(|m| m.ram_capacity_bytes > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_warm_finishes_when_run_again() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 120).await;
    let cluster = cluster(&origin, &[]).await;
    let ctl = ControlClient::connect(&cluster.control_endpoint(0), None, None)
        .await
        .unwrap();
    let mut stream = ctl
        .warm(WarmRequest {
            path: "ds/".into(),
            replicas: 1,
            ..WarmRequest::default()
        })
        .await
        .unwrap();
    // Listen until part of it is done, then go away (the warm stops with its caller).
    loop {
        let p = stream.message().await.unwrap().expect("progress");
        assert!(!p.done, "the warm finished before it could be interrupted");
        if p.bytes_done > 0 {
            break;
        }
    }
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let partial = origin.total().gets;
    assert!(partial < blocks(&objects), "the warm stopped part way");

    let last = warm(&ctl, "ds/", false).await;
    assert!(last.bytes_skipped > 0, "the rerun skipped what was loaded");
    assert_eq!(
        origin.total().gets,
        blocks(&objects),
        "no block fetched twice"
    );
    epoch(&cluster, &objects).await;
    assert_eq!(origin.total().gets, blocks(&objects));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_datasets_and_prefixes_are_checked() {
    let origin = S3Origin::start(&["bucket"]).await;
    dataset(&origin, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let cluster = cluster(
        &origin,
        &[("--control-token-file", token.to_str().unwrap())],
    )
    .await;
    let ep = cluster.control_endpoint(0);

    let none = ControlClient::connect(&ep, None, None).await.unwrap();
    let e = none.members().await.unwrap_err();
    assert!(e.is_unauthenticated());
    assert!(e.to_string().contains("missing bearer token"), "{e}");
    let wrong = ControlClient::connect(&ep, Some("guess".into()), None)
        .await
        .unwrap();
    let e = wrong.list("ds/").await.unwrap_err();
    assert!(e.to_string().contains("wrong bearer token"), "{e}");

    let ok = ControlClient::connect(&ep, Some("s3cret-token".into()), None)
        .await
        .unwrap();
    assert_eq!(ok.members().await.unwrap().members.len(), 3);
    let e = ok
        .warm(WarmRequest {
            path: "nope/".into(),
            ..WarmRequest::default()
        })
        .await
        .map(|_| ())
        .expect_err("unknown dataset");
    assert!(e.to_string().contains("unknown dataset \"nope\""), "{e}");
    let e = ok
        .warm(WarmRequest {
            path: "ds/no-such-prefix".into(),
            ..WarmRequest::default()
        })
        .await
        .map(|_| ())
        .expect_err("empty prefix");
    assert!(
        e.to_string().contains("no objects under ds/no-such-prefix"),
        "{e}"
    );
    let e = ok.list("ds/../etc").await.unwrap_err();
    assert!(e.to_string().contains(".."), "{e}");
    assert_eq!(origin.total().gets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_pins_reads_to_what_was_warmed() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 6).await;
    let cluster = cluster(&origin, &[]).await;
    let ctl = ControlClient::connect(&cluster.control_endpoint(2), None, None)
        .await
        .unwrap();
    let last = warm(&ctl, "ds/", true).await;
    assert_eq!(last.manifest.len(), 6);
    let manifest = Manifest::from_warm("ds", &last.manifest);
    for (i, o) in objects.iter().enumerate() {
        let entry = manifest.get(&format!("ds/obj-{i:03}")).unwrap();
        assert_eq!(entry.size, o.len() as u64);
        assert_eq!(entry.crc32c, crc32c(o), "the warm's CRC32C is the object's");
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    manifest.save(file.path()).unwrap();
    let manifest = Manifest::load(file.path()).unwrap();

    let client = Client::connect(&cluster.endpoint(0)).await.unwrap();
    let got = client.read_manifest("ds/obj-001", &manifest).await.unwrap();
    assert!(got[..] == objects[1][..]);

    // The object changes at the origin: a pinned read says so instead of returning new data.
    origin
        .put("bucket", "train/obj-001", bytes_for(9, objects[1].len()))
        .await;
    let fresh = Client::connect(&cluster.endpoint(1)).await.unwrap();
    // A node that has not seen the old version checks the origin and refuses.
    let err = fresh
        .read_manifest("ds/obj-001", &manifest)
        .await
        .unwrap_err();
    match err {
        shardcache_client::ClientError::Server { code, message } => {
            assert_eq!(code, ErrorCode::PreconditionFailed);
            assert!(message.contains("changed since the manifest"), "{message}");
        }
        other => panic!("unexpected {other}"),
    }
    let err = client
        .read_manifest("ds/not-warmed", &manifest)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not in the manifest"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_speaks_tls_and_counts_warm_blocks() {
    use shardcache_testsuite::TestServer;

    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert_file, key_file) = test_ca(dir.path(), &["127.0.0.1", "localhost"]);

    let mut d = origin.dataset("ds", "bucket", "train");
    d.block_size = Some(BLOCK as u64);
    let node = TestServer::builder()
        .dataset(d)
        .config(|c| {
            c.insecure_dev_tls = false;
            c.tls_cert = Some(cert_file.clone());
            c.tls_key = Some(key_file.clone());
        })
        .start()
        .await;
    let ep = node.control.unwrap().to_string();

    let tls = ControlClient::connect(&ep, None, Some(&ca)).await.unwrap();
    let last = warm(&tls, "ds/", false).await;
    assert_eq!(last.objects_done, 4);
    let stats = &node.stats;
    assert_eq!(stats.peer.warm_loaded.get(), blocks(&objects));
    assert_eq!(stats.peer.warm_cached.get(), 0);
    warm(&tls, "ds/", false).await;
    assert_eq!(stats.peer.warm_cached.get(), blocks(&objects));

    // Plain text to a TLS port is not a control plane.
    let plain = ControlClient::connect(&ep, None, None).await;
    let refused = match plain {
        Err(_) => true,
        Ok(c) => c.members().await.is_err(),
    };
    assert!(
        refused,
        "a plain-text client was served by a TLS control plane"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_all_nodes_read_the_origin_once() {
    let origin = S3Origin::start(&["bucket"]).await;
    let objects = dataset(&origin, 10).await;
    let cluster = cluster(&origin, &[]).await;
    let ctl = ControlClient::connect(&cluster.control_endpoint(0), None, None)
        .await
        .unwrap();
    let run = |replicas: u32, all_nodes: bool| {
        warm_with(
            &ctl,
            WarmRequest {
                path: "ds/".into(),
                replicas,
                all_nodes,
                ..WarmRequest::default()
            },
        )
    };
    let two = run(2, false).await;
    let total: u64 = objects.iter().map(|o| o.len() as u64).sum();
    assert_eq!(two.nodes.iter().map(|n| n.bytes).sum::<u64>(), 2 * total);
    assert_eq!(
        origin.total().gets,
        blocks(&objects),
        "copies come from the owner"
    );
    let stat = ctl.stat("ds/obj-004").await.unwrap();
    assert!(stat.blocks.iter().all(|b| b.holders.len() >= 2), "{stat:?}");

    let all = run(1, true).await;
    assert_eq!(all.nodes.iter().map(|n| n.bytes).sum::<u64>(), 3 * total);
    assert_eq!(origin.total().gets, blocks(&objects));
    let stat = ctl.stat("ds/obj-004").await.unwrap();
    assert!(stat.blocks.iter().all(|b| b.holders.len() == 3), "{stat:?}");
}
