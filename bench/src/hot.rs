//! Hot reads: R readers each read a cached object of S bytes through the cache, over TCP beside
//! raw loopback TCP (a server writing S bytes from memory on each of R connections), and over
//! QUIC beside raw quinn streams carrying S bytes.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context;
use shardcache_client::{Client, ClientOptions};
use shardcache_testsuite::{S3Origin, TestServer, bytes_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{Report, Row, median};
use crate::{Args, wants};

/// The hot runs asked for (`hot-tcp`, `hot-quic`, `hot-tls`), on one server with every object
/// cached.
pub(crate) async fn run(origin: &S3Origin, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let size = args.object_mib << 20;
    for r in 0..args.readers {
        origin
            .put("bench", &format!("hot/obj-{r}"), bytes_for(r as u64, size))
            .await;
    }
    let ram = (args.readers * size) as u64 * 2;
    let server = TestServer::builder()
        .dataset(origin.dataset("ds", "bench", "hot"))
        .config(|c| c.ram_cache = ram)
        .start()
        .await;
    // Warm: every object read once.
    let warm = Client::connect(&server.tcp_endpoint()).await?;
    for r in 0..args.readers {
        let got = warm.read(&format!("ds/obj-{r}"), ..).await?;
        anyhow::ensure!(
            got[..] == bytes_for(r as u64, size)[..],
            "warm read of obj-{r} differs"
        );
    }
    let origin_gets = server.stats.snapshot().origin_get_requests;

    // Baseline and cache alternate `reps` times; the medians are compared, so a slow
    // moment of the machine does not land on one side only.
    if wants(args, "hot-tcp") {
        let (mut raws, mut streams, mut intos) = (Vec::new(), Vec::new(), Vec::new());
        let ep = server.tcp_endpoint();
        for _ in 0..args.reps {
            raws.push(raw_tcp(args.readers, size, args.rounds).await?);
            streams
                .push(hot_reads(&ep, ClientOptions::default(), args, size, Api::Stream, 0).await?);
            intos.push(hot_reads(&ep, ClientOptions::default(), args, size, Api::Into, 0).await?);
        }
        let (raw, stream, into) = (median(raws), median(streams), median(intos));
        report.ratios.push((
            "hot TCP (read_stream) / raw loopback TCP".to_string(),
            stream.gbps() / raw.gbps(),
            0.80,
            true,
        ));
        report.ratios.push((
            "hot TCP (read_into) / raw loopback TCP".to_string(),
            into.gbps() / raw.gbps(),
            0.0,
            true,
        ));
        report.rows.push(raw);
        report.rows.push(Row {
            name: "shardcache hot, TCP, read_stream (verified chunks)".into(),
            ..stream
        });
        report.rows.push(Row {
            name: "shardcache hot, TCP, read_into (copied to caller's buffer)".into(),
            ..into
        });
    }
    if wants(args, "hot-quic") {
        let (mut raws, mut caches) = (Vec::new(), Vec::new());
        let options = ClientOptions {
            insecure_skip_verify: true,
            ..ClientOptions::default()
        };
        for _ in 0..args.reps {
            raws.push(raw_quic(args.readers, size, args.rounds).await?);
            caches.push(
                hot_reads(
                    &server.quic_endpoint(),
                    options.clone(),
                    args,
                    size,
                    Api::Stream,
                    0,
                )
                .await?,
            );
        }
        let (raw, cache) = (median(raws), median(caches));
        report.ratios.push((
            "hot QUIC / raw QUIC".to_string(),
            cache.gbps() / raw.gbps(),
            0.0,
            true,
        ));
        report.rows.push(raw);
        report.rows.push(Row {
            name: "shardcache hot, QUIC, read_stream".into(),
            ..cache
        });
    }
    if wants(args, "hot-tls") {
        tls_and_tokens(origin, args, report, &server, ram, size).await?;
    }
    anyhow::ensure!(
        server.stats.snapshot().origin_get_requests == origin_gets,
        "hot reads went to the origin"
    );
    Ok(())
}

/// The cost of authentication and TLS: the same hot reads through `open` (no tokens, plain
/// TCP), and through a second server over the same objects that requires an access token, over
/// plain TCP and over TLS on the same port.
async fn tls_and_tokens(
    origin: &S3Origin,
    args: &Args,
    report: &mut Report,
    open: &TestServer,
    ram: u64,
    size: usize,
) -> anyhow::Result<()> {
    const TOKEN: &str = "bench-reader-token-5f0c2e7a91d4";
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{TOKEN} ds\n"))?;
    let guarded = TestServer::builder()
        .dataset(origin.dataset("ds", "bench", "hot"))
        .config(|c| {
            c.ram_cache = ram;
            c.access_tokens = Some(tokens.clone());
        })
        .start()
        .await;
    let with_token = ClientOptions {
        token: Some(TOKEN.into()),
        insecure_skip_verify: true,
        ..ClientOptions::default()
    };
    let warm = Client::connect_with(&guarded.tcp_endpoint(), with_token.clone()).await?;
    for r in 0..args.readers {
        warm.read(&format!("ds/obj-{r}"), ..).await?;
    }
    let tls = format!("tls://{}", guarded.tcp);
    let (mut plains, mut tokened, mut tlss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.reps {
        let ep = open.tcp_endpoint();
        plains.push(hot_reads(&ep, ClientOptions::default(), args, size, Api::Stream, 0).await?);
        let ep = guarded.tcp_endpoint();
        tokened.push(hot_reads(&ep, with_token.clone(), args, size, Api::Stream, 0).await?);
        tlss.push(hot_reads(&tls, with_token.clone(), args, size, Api::Stream, 0).await?);
    }
    let (plain, tokened, tls) = (median(plains), median(tokened), median(tlss));
    report.ratios.push((
        "hot TCP with an access token / without".to_string(),
        tokened.gbps() / plain.gbps(),
        0.0,
        true,
    ));
    report.ratios.push((
        "hot TLS over TCP with an access token / plain TCP without".to_string(),
        tls.gbps() / plain.gbps(),
        0.0,
        true,
    ));
    report.rows.push(Row {
        name: "shardcache hot, TCP, no token (read_stream)".into(),
        ..plain
    });
    report.rows.push(Row {
        name: "shardcache hot, TCP, access token (read_stream)".into(),
        ..tokened
    });
    report.rows.push(Row {
        name: "shardcache hot, TLS 1.3 over TCP, access token (read_stream)".into(),
        ..tls
    });
    anyhow::ensure!(
        guarded.stats.transport.auth_failures.get() == 0,
        "a bench client's token was refused"
    );
    Ok(())
}

/// How a hot reader takes the bytes.
#[derive(Clone, Copy)]
pub(crate) enum Api {
    /// `read_stream`: checksum-verified chunks in the client's receive buffers, no further copy.
    Stream,
    /// `read_into`: copied into a buffer the reader owns.
    Into,
}

/// `readers` tasks, each reading its own cached object `rounds` times.
pub(crate) async fn hot_reads(
    endpoint: &str,
    options: ClientOptions,
    args: &Args,
    size: usize,
    api: Api,
    seed_base: u64,
) -> anyhow::Result<Row> {
    let mut clients = Vec::new();
    for _ in 0..args.readers {
        let options = ClientOptions {
            connections: 1,
            ..options.clone()
        };
        clients.push(Client::connect_with(endpoint, options).await?);
    }
    // Expected tails, computed before the clock starts.
    let tails: Vec<Vec<u8>> = (0..args.readers)
        .map(|r| bytes_for(seed_base + r as u64, size)[size - 64..].to_vec())
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((r, client), tail) in clients.into_iter().enumerate().zip(tails) {
        let rounds = args.rounds;
        tasks.push(tokio::spawn(async move {
            let path = format!("ds/obj-{r}");
            let mut buf = vec![0u8; size];
            for _ in 0..rounds {
                match api {
                    Api::Into => {
                        let n = client.read_into(&path, 0, &mut buf).await?;
                        anyhow::ensure!(n == size, "short read");
                    }
                    Api::Stream => {
                        let mut stream = client.read_stream(&path, 0, None, None).await?;
                        let mut n = 0;
                        while let Some(chunk) = stream.next_chunk().await? {
                            n += chunk.data.len();
                            if n == size {
                                buf[size - 64..]
                                    .copy_from_slice(&chunk.data[chunk.data.len() - 64..]);
                            }
                        }
                        anyhow::ensure!(n == size, "short read");
                    }
                }
            }
            // Spot-check that the bytes are the object's.
            anyhow::ensure!(buf[size - 64..] == tail[..], "wrong bytes");
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Row {
        name: String::new(),
        bytes: (args.readers * args.rounds * size) as u64,
        secs,
    })
}

/// Raw loopback TCP: a server writes `size` bytes from memory per request byte; `readers`
/// clients read them into their own buffers, `rounds` times.
async fn raw_tcp(readers: usize, size: usize, rounds: usize) -> anyhow::Result<Row> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let payload = bytes::Bytes::from(bytes_for(99, size));
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let payload = payload.clone();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut req = [0u8; 1];
                while s.read_exact(&mut req).await.is_ok() {
                    if s.write_all(&payload).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..readers {
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; size];
            for _ in 0..rounds {
                s.write_all(&[1]).await?;
                s.read_exact(&mut buf).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    server.abort();
    Ok(Row {
        name: "raw loopback TCP".into(),
        bytes: (readers * rounds * size) as u64,
        secs,
    })
}

/// Raw QUIC: quinn streams carrying `size` bytes from memory, one stream per read, `readers`
/// connections, with the same TLS and windows as the cache's QUIC transport.
async fn raw_quic(readers: usize, size: usize, rounds: usize) -> anyhow::Result<Row> {
    let id = shardcache_server::transport::tls::Identity::self_signed()?;
    let server_config = shardcache_server::transport::tls::quic_server_config(id, None)?;
    let endpoint = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let addr: SocketAddr = endpoint.local_addr()?;
    let payload = bytes::Bytes::from(bytes_for(99, size));
    let server_ep = endpoint.clone();
    let server = tokio::spawn(async move {
        while let Some(incoming) = server_ep.accept().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let payload = payload.clone();
                    tokio::spawn(async move {
                        let _ = recv.read_to_end(16).await;
                        let _ = send.write_chunk(payload).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    let options = ClientOptions {
        insecure_skip_verify: true,
        ..ClientOptions::default()
    };
    let mut conns = Vec::new();
    for _ in 0..readers {
        let ep = shardcache_client_quic_endpoint(&options, addr)?;
        let conn = ep
            .connect(addr, "localhost")?
            .await
            .context("raw quic connect")?;
        conns.push((ep, conn));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (ep, conn) in conns {
        tasks.push(tokio::spawn(async move {
            let _ep = ep;
            let mut buf = vec![0u8; size];
            for _ in 0..rounds {
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(&[1]).await?;
                send.finish()?;
                recv.read_exact(&mut buf).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    server.abort();
    endpoint.close(0u32.into(), b"done");
    Ok(Row {
        name: "raw QUIC".into(),
        bytes: (readers * rounds * size) as u64,
        secs,
    })
}

/// The client's QUIC endpoint setup, reused so raw QUIC runs with the same TLS and windows.
fn shardcache_client_quic_endpoint(
    options: &ClientOptions,
    remote: SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    Ok(shardcache_client::quic_endpoint(options, remote)?)
}
