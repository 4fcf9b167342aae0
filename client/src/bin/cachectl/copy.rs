//! `cachectl cp`: objects to local files, each written whole or not at all.
//!
//! A file appears under its name only once every byte of one version of the object is in it
//! (written beside it under a hidden name, flushed, then renamed), so an init container that
//! restores a checkpoint into a volume never leaves a torn file for the trainer to read.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use shardcache_client::Client;

use super::human;
use super::{Cli, Output, control, data_client, write_object};

/// `cp DATASET/KEY DEST` (a file, or an existing directory to put it in) or
/// `cp DATASET/PREFIX/ DIR` (every object under the prefix, at its path below the prefix).
pub async fn cp(cli: &Cli, path: &str, dest: &Path) -> anyhow::Result<()> {
    let (dataset, rest) = path
        .split_once('/')
        .with_context(|| format!("{path}: name DATASET/KEY, or DATASET/PREFIX/ for a prefix"))?;
    if !rest.is_empty() && !rest.ends_with('/') {
        let name = rest.rsplit('/').next().unwrap_or(rest);
        let target = if dest.is_dir() {
            dest.join(name)
        } else {
            dest.to_path_buf()
        };
        let client = data_client(cli).await?;
        let bytes = copy_one(&client, path, &target).await?;
        if let Output::Json = cli.output {
            println!("{}", json!({"objects": 1, "bytes": bytes}));
        }
        return Ok(());
    }
    let listed = control(cli).await?.list(path).await?;
    if listed.objects.is_empty() {
        anyhow::bail!(
            "no objects under {path}: check the prefix (keys are listed with `cachectl ls {dataset}/`)"
        );
    }
    // Every destination is checked before any byte is read.
    let mut plan = Vec::with_capacity(listed.objects.len());
    for object in &listed.objects {
        let relative = object.key.strip_prefix(rest).with_context(|| {
            format!(
                "the server listed {dataset}/{} under {path}, which does not hold it",
                object.key
            )
        })?;
        plan.push((
            format!("{dataset}/{}", object.key),
            dest.join(below(relative)?),
        ));
    }
    std::fs::create_dir_all(dest)
        .with_context(|| format!("cannot create directory {}", dest.display()))?;
    let client = data_client(cli).await?;
    let mut total = 0;
    for (object, target) in &plan {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create directory {}", parent.display()))?;
        }
        total += copy_one(&client, object, target).await?;
    }
    let n = plan.len();
    match cli.output {
        Output::Text => println!(
            "copied {n} object{} ({}) to {}",
            if n == 1 { "" } else { "s" },
            human::size(total),
            dest.display()
        ),
        Output::Json => println!("{}", json!({"objects": n, "bytes": total})),
    }
    Ok(())
}

/// A listed key's path below the destination: plain names only, so no key (whatever a server
/// answers) writes outside it.
fn below(relative: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(relative);
    let plain = !relative.is_empty()
        && !relative.ends_with('/')
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && !relative
            .split('/')
            .any(|part| part.is_empty() || part == ".");
    anyhow::ensure!(
        plain,
        "refusing to copy the key {relative:?}: it does not name a file below the destination"
    );
    Ok(path.to_path_buf())
}

/// Writes `path` to `target` through a hidden file beside it; returns the bytes written.
async fn copy_one(client: &Client, path: &str, target: &Path) -> anyhow::Result<u64> {
    let name = target
        .file_name()
        .with_context(|| format!("{} names no file", target.display()))?;
    let partial = target.with_file_name(format!(
        ".{}.cachectl-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = async {
        let file = File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let bytes = write_object(client, path, 0, None, &mut out).await?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", partial.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", partial.display()))?;
        std::fs::rename(&partial, target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                partial.display(),
                target.display()
            )
        })?;
        anyhow::Ok(bytes)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::below;

    #[test]
    fn keys_stay_below_the_destination() {
        assert_eq!(below("a/b.tar").unwrap(), std::path::Path::new("a/b.tar"));
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/",
            "a/./b",
        ] {
            assert!(below(bad).is_err(), "{bad:?} accepted");
        }
    }
}
