//! What works on an origin with its effective settings: a LIST, a HEAD and a one-byte ranged
//! GET, each with its result or its cause. `shardcache check-origin` prints it; the server runs
//! the LIST at start-up and logs whether each origin is reachable before it serves.

use std::fmt;
use std::time::{Duration, Instant};

use super::{Origin, Version};
use crate::error::Error;

/// One step of a check.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    /// `None`: skipped.
    pub ok: Option<bool>,
    pub detail: String,
    pub took: Duration,
}

/// The check of one origin.
#[derive(Debug, Clone)]
pub struct Report {
    pub dataset: String,
    /// Effective settings, secrets redacted: `(what, value (source))`.
    pub settings: Vec<(String, String)>,
    pub steps: Vec<Step>,
}

impl Report {
    /// Every step that ran worked.
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.ok != Some(false))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dataset {}", self.dataset)?;
        let width = self
            .settings
            .iter()
            .map(|(k, _)| k.len())
            .max()
            .unwrap_or(0);
        for (k, v) in &self.settings {
            writeln!(f, "  {k:<width$}  {v}")?;
        }
        for s in &self.steps {
            let verdict = match s.ok {
                Some(true) => "ok",
                Some(false) => "FAILED",
                None => "skipped",
            };
            writeln!(
                f,
                "  {:<4} {verdict:<7} {} ({} ms)",
                s.name,
                s.detail,
                s.took.as_millis()
            )?;
        }
        Ok(())
    }
}

fn step<T>(
    name: &'static str,
    started: Instant,
    r: &Result<T, Error>,
    ok: impl FnOnce(&T) -> String,
) -> Step {
    Step {
        name,
        ok: Some(r.is_ok()),
        detail: match r {
            Ok(v) => ok(v),
            Err(e) => e.to_string(),
        },
        took: started.elapsed(),
    }
}

/// LIST, HEAD and a one-byte GET on `origin`.
pub async fn check(origin: &Origin) -> Report {
    let mut steps = Vec::new();
    let started = Instant::now();
    let listed = origin.list_first(None, 5).await;
    let first = listed
        .as_ref()
        .ok()
        .and_then(|v| v.iter().find(|m| m.size > 0).or(v.first()).cloned());
    steps.push(step("LIST", started, &listed, |v| match v.first() {
        None => "answered: no objects under the dataset's prefix".into(),
        Some(m) => format!(
            "answered: {}{} object(s), e.g. {}",
            v.len(),
            if v.len() >= 5 { "+" } else { "" },
            m.location
        ),
    }));

    // HEAD an object the listing found, else a key that should not exist (a 404 proves the
    // origin answers and the credentials may read).
    let started = Instant::now();
    let key = first
        .as_ref()
        .map(|m| m.location.to_string())
        .unwrap_or_else(|| ".shardcache-check-origin".into());
    let head = origin.head_once(&key).await;
    let head = match head {
        Err(Error::NotFound { .. }) if first.is_none() => Ok(None),
        other => other.map(Some),
    };
    steps.push(step(
        "HEAD",
        started,
        &head,
        |v: &Option<Version>| match v {
            Some(v) => format!(
                "{key}: {} bytes, etag {}, modified {}",
                v.size,
                if v.etag.is_empty() { "(none)" } else { &v.etag },
                chrono::DateTime::from_timestamp_millis(v.last_modified_ms)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
            None => format!("answered: {key} not found, as expected"),
        },
    ));

    let started = Instant::now();
    match head {
        Ok(Some(v)) if v.size > 0 => {
            let got = origin.get_range(&key, &v, 0..1).await;
            steps.push(step("GET", started, &got, |b| {
                format!("read {} byte of {key} at its version", b.len())
            }));
        }
        _ => steps.push(Step {
            name: "GET",
            ok: None,
            detail: "no object to read a byte of".into(),
            took: Duration::ZERO,
        }),
    }
    Report {
        dataset: origin.dataset().to_string(),
        settings: origin.described().map(|d| d.describe()).unwrap_or_default(),
        steps,
    }
}

/// Whether `origin` answers a LIST: `Ok(what it said)` or `Err(cause)`.
pub async fn reachable(origin: &Origin) -> Result<String, String> {
    match origin.list_first(None, 1).await {
        Ok(v) if v.is_empty() => Ok("reachable, no objects yet".into()),
        Ok(_) => Ok("reachable".into()),
        Err(e) => Err(e.to_string()),
    }
}
