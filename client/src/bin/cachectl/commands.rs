//! The commands that talk to the control plane (and `stat`, which falls back to the data
//! plane).

use serde_json::json;
use shardcache_client::Manifest;
use shardcache_client::control_proto::WarmRequest;

use super::human;
use super::{Cli, Output, TwoServers, control, data_client, report};

/// `stat`: from the control plane (version, blocks, holders); from the data plane (version
/// only) when no control plane answers.
pub async fn stat(cli: &Cli, path: &str) -> anyhow::Result<()> {
    let ctl = match control(cli).await {
        Ok(c) => c,
        // Two servers named: never show one server's view as the other's.
        Err(e) if e.downcast_ref::<TwoServers>().is_some() => return Err(e),
        Err(e) => {
            eprintln!(
                "cachectl: {}; showing the data plane's view only",
                report(&e)
            );
            let client = data_client(cli).await?;
            let info = client.stat(path).await?;
            match cli.output {
                Output::Text => {
                    println!("path:           {path}");
                    println!(
                        "size:           {} ({} bytes)",
                        human::size(info.size),
                        info.size
                    );
                    println!("etag:           {}", info.etag);
                    println!("last modified:  {}", human::time_ms(info.last_modified_ms));
                    println!(
                        "block size:     {}",
                        human::size(u64::from(info.block_size))
                    );
                }
                Output::Json => println!(
                    "{}",
                    json!({"path": path, "size": info.size, "etag": info.etag,
                           "last_modified_ms": info.last_modified_ms, "block_size": info.block_size})
                ),
            }
            return Ok(());
        }
    };
    let s = ctl.stat(path).await?;
    match cli.output {
        Output::Text => {
            let cached = s.blocks.iter().filter(|b| !b.holders.is_empty()).count();
            println!("path:           {}", s.path);
            println!("size:           {} ({} bytes)", human::size(s.size), s.size);
            println!("etag:           {}", s.etag);
            println!("last modified:  {}", human::time_ms(s.last_modified_ms));
            println!("block size:     {}", human::size(u64::from(s.block_size)));
            println!("blocks:         {} ({cached} cached)", s.blocks.len());
            let rows: Vec<Vec<String>> = s
                .blocks
                .iter()
                .map(|b| {
                    vec![
                        b.index.to_string(),
                        human::size(b.length),
                        b.owner.clone(),
                        if b.holders.is_empty() {
                            "(not cached)".to_string()
                        } else {
                            b.holders.join(",")
                        },
                    ]
                })
                .collect();
            if !rows.is_empty() {
                println!(
                    "{}",
                    human::table(
                        &["BLOCK", "LENGTH", "OWNER", "HELD BY"],
                        &[true, true, false, false],
                        &rows
                    )
                );
            }
        }
        Output::Json => {
            let blocks: Vec<_> = s
                .blocks
                .iter()
                .map(|b| json!({"index": b.index, "length": b.length, "owner": b.owner, "holders": b.holders}))
                .collect();
            println!(
                "{}",
                json!({"path": s.path, "size": s.size, "etag": s.etag,
                       "last_modified_ms": s.last_modified_ms, "block_size": s.block_size,
                       "blocks": blocks})
            );
        }
    }
    Ok(())
}

pub async fn warm(
    cli: &Cli,
    path: &str,
    replicas: u32,
    all_nodes: bool,
    wait: bool,
    manifest: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let ctl = control(cli).await?;
    let wait = wait || manifest.is_some();
    let mut stream = ctl
        .warm(WarmRequest {
            path: path.to_string(),
            replicas,
            all_nodes,
            manifest: manifest.is_some(),
            detach: !wait,
        })
        .await?;
    let bar = (wait && std::io::stderr().is_terminal() && matches!(cli.output, Output::Text))
        .then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
    let mut failures = Vec::new();
    let mut failed_nodes = std::collections::BTreeSet::new();
    let mut last = None;
    let mut printed: Option<std::time::Instant> = None;
    while let Some(p) = stream.message().await? {
        for f in &p.failures {
            failures.push((f.path.clone(), f.message.clone(), f.node.clone()));
            // A node that fails is reported once, not once per block.
            if !f.node.is_empty() && !failed_nodes.insert(f.node.clone()) {
                continue;
            }
            let line = if f.node.is_empty() {
                format!("failed: {}: {}", f.path, f.message)
            } else {
                format!(
                    "node {} failed ({}: {}); going on without it",
                    f.node, f.path, f.message
                )
            };
            if let Some(bar) = &bar {
                bar.println(line);
            } else if matches!(cli.output, Output::Text) {
                eprintln!("{line}");
            }
        }
        if let Some(bar) = &bar {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(format!("{}/{} objects", p.objects_done, p.objects_total));
        } else if matches!(cli.output, Output::Text)
            && (p.done || printed.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)))
        {
            printed = Some(std::time::Instant::now());
            eprintln!(
                "warm {path}: {}/{} objects, {} of {} ({} already cached)",
                p.objects_done,
                p.objects_total,
                human::size(p.bytes_done),
                human::size(p.bytes_total),
                human::size(p.bytes_skipped)
            );
        }
        let done = p.done;
        last = Some(p);
        if done || !wait {
            break;
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let Some(last) = last else {
        anyhow::bail!("the warm of {path} ended without a report");
    };
    if wait && !last.done {
        anyhow::bail!("the warm of {path} ended before it finished; run it again to finish");
    }
    if let (Some(file), true) = (manifest, last.done) {
        let dataset = path.split_once('/').map_or(path, |(d, _)| d);
        Manifest::from_warm(dataset, &last.manifest).save(file)?;
    }
    match cli.output {
        Output::Text => {
            if wait {
                println!(
                    "warmed {path}: {} objects, {} ({} already cached), {} failures",
                    last.objects_done,
                    human::size(last.bytes_done),
                    human::size(last.bytes_skipped),
                    failures.len()
                );
                let rows: Vec<Vec<String>> = last
                    .nodes
                    .iter()
                    .map(|n| vec![n.node_id.clone(), human::size(n.bytes)])
                    .collect();
                if !rows.is_empty() {
                    println!(
                        "{}",
                        human::table(&["NODE", "LOADED"], &[false, true], &rows)
                    );
                }
            } else {
                println!(
                    "warming {path} in the background: {} objects, {} (follow with `cachectl ls {path}`)",
                    last.objects_total,
                    human::size(last.bytes_total)
                );
            }
        }
        Output::Json => {
            let nodes: serde_json::Map<String, serde_json::Value> = last
                .nodes
                .iter()
                .map(|n| (n.node_id.clone(), json!(n.bytes)))
                .collect();
            let fails: Vec<_> = failures
                .iter()
                .map(|(p, m, n)| json!({"path": p, "message": m, "node": n}))
                .collect();
            println!(
                "{}",
                json!({"path": path, "done": last.done, "objects_total": last.objects_total,
                       "objects_done": last.objects_done, "bytes_total": last.bytes_total,
                       "bytes_done": last.bytes_done, "bytes_skipped": last.bytes_skipped,
                       "nodes": nodes, "failures": fails})
            );
        }
    }
    if !failures.is_empty() {
        let nodes: Vec<&str> = failed_nodes.iter().map(String::as_str).collect();
        let list: Vec<String> = failures
            .iter()
            .filter(|f| f.2.is_empty())
            .map(|(p, m, _)| format!("  {p}: {m}"))
            .collect();
        if list.is_empty() && last.done && last.bytes_done == last.bytes_total {
            anyhow::bail!(
                "every block is on the nodes that stayed up, but node(s) {} failed during the warm",
                nodes.join(", ")
            );
        }
        anyhow::bail!(
            "{} failures{}:\n{}",
            failures.len(),
            if nodes.is_empty() {
                String::new()
            } else {
                format!(" (node(s) {} failed)", nodes.join(", "))
            },
            list.join("\n")
        );
    }
    Ok(())
}

pub async fn ls(cli: &Cli, path: &str) -> anyhow::Result<()> {
    let resp = control(cli).await?.list(path).await?;
    match cli.output {
        Output::Text => {
            let rows: Vec<Vec<String>> = resp
                .objects
                .iter()
                .map(|o| {
                    vec![
                        human::size(o.size),
                        format!("{:.1}%", o.cached_fraction * 100.0),
                        o.key.clone(),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                let total: u64 = resp.objects.iter().map(|o| o.size).sum();
                println!(
                    "{}",
                    human::table(&["SIZE", "CACHED", "KEY"], &[true, true, false], &rows)
                );
                let n = rows.len();
                println!(
                    "{n} object{}, {}",
                    if n == 1 { "" } else { "s" },
                    human::size(total)
                );
            }
        }
        Output::Json => {
            let objects: Vec<_> = resp
                .objects
                .iter()
                .map(|o| json!({"key": o.key, "size": o.size, "etag": o.etag, "cached_fraction": o.cached_fraction}))
                .collect();
            println!("{}", json!({"path": path, "objects": objects}));
        }
    }
    if resp.objects.is_empty() {
        anyhow::bail!(
            "no objects under {path}: check the prefix (keys are listed with `cachectl ls DATASET/`)"
        );
    }
    Ok(())
}

pub async fn evict(cli: &Cli, path: &str) -> anyhow::Result<()> {
    let resp = control(cli).await?.evict(path).await?;
    match cli.output {
        Output::Text => println!(
            "evicted {path}: {} objects, {} blocks dropped",
            resp.objects, resp.blocks
        ),
        Output::Json => {
            let fails: Vec<_> = resp
                .failures
                .iter()
                .map(|f| json!({"path": f.path, "message": f.message}))
                .collect();
            println!(
                "{}",
                json!({"path": path, "objects": resp.objects, "blocks": resp.blocks, "failures": fails})
            );
        }
    }
    if !resp.failures.is_empty() {
        let list: Vec<String> = resp
            .failures
            .iter()
            .map(|f| format!("  {}: {}", f.path, f.message))
            .collect();
        anyhow::bail!("{} failures:\n{}", resp.failures.len(), list.join("\n"));
    }
    Ok(())
}

pub async fn members(cli: &Cli) -> anyhow::Result<()> {
    let resp = control(cli).await?.members().await?;
    match cli.output {
        Output::Text => {
            let rows: Vec<Vec<String>> = resp
                .members
                .iter()
                .map(|m| {
                    let usage = |used: u64, cap: u64| {
                        if cap == 0 {
                            "-".to_string()
                        } else {
                            format!("{} / {}", human::size(used), human::size(cap))
                        }
                    };
                    vec![
                        m.node_id.clone(),
                        m.address.clone(),
                        m.state.clone(),
                        m.weight.to_string(),
                        usage(m.ram_used_bytes, m.ram_capacity_bytes),
                        usage(m.disk_used_bytes, m.disk_capacity_bytes),
                        m.detail.clone(),
                    ]
                })
                .collect();
            println!(
                "{}",
                human::table(
                    &[
                        "NODE", "ADDRESS", "STATE", "WEIGHT", "RAM", "DISK", "DETAIL"
                    ],
                    &[false, false, false, true, true, true, false],
                    &rows
                )
            );
        }
        Output::Json => {
            let members: Vec<_> = resp
                .members
                .iter()
                .map(|m| {
                    json!({"node_id": m.node_id, "address": m.address, "state": m.state,
                                "weight": m.weight, "ram_used_bytes": m.ram_used_bytes,
                                "ram_capacity_bytes": m.ram_capacity_bytes,
                                "disk_used_bytes": m.disk_used_bytes,
                                "disk_capacity_bytes": m.disk_capacity_bytes, "detail": m.detail})
                })
                .collect();
            println!("{}", json!({"members": members}));
        }
    }
    Ok(())
}
