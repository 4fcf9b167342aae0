//! Sizes and durations as people write them (`512MiB`, `4GiB`, `30s`, `5m`), in flags,
//! environment variables and the TOML file alike.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A size such as `512MiB`, `4GiB`, `1TB`, or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?} ({e}); use e.g. 512MiB, 4GiB, 1TB"))
}

/// A duration such as `500ms`, `30s`, `5m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 500ms, 30s, 5m"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrText {
    Int(u64),
    Text(String),
}

/// serde: a size written as bytes or as text.
pub fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match IntOrText::deserialize(d)? {
        IntOrText::Int(n) => Ok(Some(n)),
        IntOrText::Text(s) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// serde: a duration written as seconds or as text.
pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match IntOrText::deserialize(d)? {
        IntOrText::Int(secs) => Ok(Some(Duration::from_secs(secs))),
        IntOrText::Text(s) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// serde: a table of raw store options; values may be written as strings, numbers or booleans.
pub fn de_options<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<String, toml::Value>::deserialize(d)?;
    table
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "options.{k}: {other} is not a string, number or boolean"
                    )));
                }
            };
            Ok((k, text))
        })
        .collect()
}
