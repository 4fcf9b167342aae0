//! The admin endpoint against a scripted workload: the counters say what the workload did.

use shardcache_client::Client;
use shardcache_server::config::DatasetConfig;
use shardcache_testsuite::{S3Origin, TestServer, bytes_for, closed_port, s3_dataset_at};

/// The value of one sample line (`name{labels} value`) in Prometheus text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn counters_match_the_workload() {
    let origin = S3Origin::start(&["bucket"]).await;
    let size = 10 * 1024 * 1024 + 17;
    origin.put("bucket", "obj", bytes_for(9, size)).await;
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", ""))
        .start()
        .await;
    let client = Client::connect(&server.tcp_endpoint()).await.unwrap();
    let blocks = size.div_ceil(4 << 20) as f64;

    // First read: every byte from the origin.
    client.read("ds/obj", ..).await.unwrap();
    let (status, m) = server.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&m, "shardcache_origin_bytes_total"), size as f64);
    assert_eq!(
        sample(&m, "shardcache_served_bytes_total{source=\"origin\"}"),
        size as f64
    );
    assert_eq!(
        sample(&m, "shardcache_served_bytes_total{source=\"ram\"}"),
        0.0
    );
    assert_eq!(
        sample(&m, "shardcache_origin_requests_total{op=\"get\"}"),
        blocks
    );
    assert_eq!(
        sample(&m, "shardcache_origin_requests_total{op=\"head\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "shardcache_tier_misses_total{tier=\"ram\"}"),
        blocks
    );
    assert_eq!(
        sample(&m, "shardcache_tier_used_bytes{tier=\"ram\"}"),
        size as f64
    );
    assert_eq!(
        sample(&m, "shardcache_tier_capacity_bytes{tier=\"ram\"}"),
        (512u64 << 20) as f64
    );
    assert_eq!(
        sample(&m, "shardcache_request_duration_seconds_count{op=\"read\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "shardcache_origin_request_duration_seconds_count{op=\"get\"}"
        ),
        blocks
    );
    assert_eq!(
        sample(&m, "shardcache_served_bytes_total{source=\"disk\"}"),
        0.0
    );
    assert_eq!(sample(&m, "shardcache_checksum_failures_total"), 0.0);
    assert_eq!(sample(&m, "shardcache_open_connections"), 1.0);
    assert_eq!(
        origin.counts("bucket", "obj").get_bytes,
        size as u64,
        "origin agrees"
    );

    // Second read: no new origin bytes, every block a RAM hit.
    client.read("ds/obj", ..).await.unwrap();
    let (_, m) = server.admin_get("/metrics").await;
    assert_eq!(sample(&m, "shardcache_origin_bytes_total"), size as f64);
    assert_eq!(
        sample(&m, "shardcache_origin_requests_total{op=\"get\"}"),
        blocks
    );
    assert_eq!(
        sample(&m, "shardcache_served_bytes_total{source=\"ram\"}"),
        size as f64
    );
    assert_eq!(
        sample(&m, "shardcache_tier_hits_total{tier=\"ram\"}"),
        blocks
    );
    assert_eq!(sample(&m, "shardcache_requests_total"), 2.0);

    // A failed request is counted as such.
    client.read("ds/missing", ..).await.unwrap_err();
    let (_, m) = server.admin_get("/metrics").await;
    assert_eq!(sample(&m, "shardcache_failed_requests_total"), 1.0);
    assert!(m.contains("# TYPE shardcache_request_duration_seconds histogram"));
}

#[tokio::test]
async fn health_and_readiness() {
    let origin = S3Origin::start(&["bucket"]).await;
    let dead = s3_dataset_at("dead", closed_port().await);

    let healthy = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", ""))
        .start()
        .await;
    assert_eq!(healthy.admin_get("/healthz").await.0, 200);
    assert_eq!(
        healthy.admin_get("/readyz").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(healthy.admin_get("/nope").await.0, 404);

    let broken = TestServer::builder()
        .dataset(origin.dataset("ds", "bucket", ""))
        .dataset(dead)
        .start()
        .await;
    assert_eq!(
        broken.admin_get("/healthz").await.0,
        200,
        "alive even when not ready"
    );
    let (status, body) = broken.admin_get("/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("dataset dead") && !body.contains("dataset ds"),
        "{body}"
    );
}

#[tokio::test]
async fn dashboards_only_use_metrics_the_server_exports() {
    let server = TestServer::builder()
        .dataset(DatasetConfig::new("m", "memory://"))
        .start()
        .await;
    let (_, text) = server.admin_get("/metrics").await;
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/shardcache/dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let json = std::fs::read_to_string(&path).unwrap();
        let mut rest = json.as_str();
        while let Some(at) = rest.find("shardcache_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| text.contains(&format!("# TYPE {b} histogram")))
                .unwrap_or(&name);
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "{} uses {name}, which /metrics does not export",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} metric references found");
}
