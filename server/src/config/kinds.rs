//! How each kind of setting is written: as text (flags, environment variables, the defaults of
//! the table) and as a TOML value (the config file). Every kind is a module with the Rust type
//! it becomes (`T`), `text` and `toml` parsers, and whether a flag of that kind may be given
//! without a value (`SWITCH`: `--insecure-dev-tls` means `--insecure-dev-tls true`).

use toml::Value;

/// A TOML value as text, for kinds that accept either (a number or a string, say).
fn as_text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        other => Err(format!("{other} is not a single value")),
    }
}

/// Words that turn an optional listener, file or size off.
fn is_off(s: &str) -> bool {
    matches!(s.trim().to_ascii_lowercase().as_str(), "off" | "none" | "")
}

macro_rules! kind {
    ($name:ident, $t:ty, $switch:expr, |$s:ident| $text:expr, |$v:ident| $toml:expr) => {
        pub mod $name {
            #[allow(unused_imports)]
            use super::*;
            pub type T = $t;
            pub const SWITCH: bool = $switch;
            pub fn text($s: &str) -> Result<T, String> {
                $text
            }
            pub fn toml($v: &Value) -> Result<T, String> {
                $toml
            }
        }
    };
}

kind!(
    addr,
    std::net::SocketAddr,
    false,
    |s| s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not an address such as 127.0.0.1:7070 ({e})")),
    |v| text(&as_text(v)?)
);

kind!(
    opt_addr,
    Option<std::net::SocketAddr>,
    false,
    |s| if is_off(s) {
        Ok(None)
    } else {
        s.trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("{s:?} is not an address such as 127.0.0.1:7072 ({e}), or off"))
    },
    |v| text(&as_text(v)?)
);

kind!(
    opt_path,
    Option<std::path::PathBuf>,
    false,
    |s| Ok((!is_off(s)).then(|| std::path::PathBuf::from(s.trim()))),
    |v| text(&as_text(v)?)
);

kind!(
    opt_text,
    Option<String>,
    false,
    |s| Ok((!is_off(s)).then(|| s.trim().to_string())),
    |v| text(&as_text(v)?)
);

/// A whole number of the type `T` (its range checked by the parse).
fn whole<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))
}

kind!(count, usize, false, |s| whole(s), |v| text(&as_text(v)?));
kind!(count64, u64, false, |s| whole(s), |v| text(&as_text(v)?));
kind!(count32, u32, false, |s| whole(s), |v| text(&as_text(v)?));

kind!(size, u64, false, |s| crate::units::parse_size(s), |v| text(
    &as_text(v)?
));

kind!(
    opt_size,
    Option<u64>,
    false,
    |s| if is_off(s) {
        Ok(None)
    } else {
        crate::units::parse_size(s).map(Some)
    },
    |v| text(&as_text(v)?)
);

kind!(
    duration,
    std::time::Duration,
    false,
    |s| crate::units::parse_duration(s),
    // A bare number in the file is seconds.
    |v| match v {
        Value::Integer(n) if *n >= 0 => Ok(std::time::Duration::from_secs(*n as u64)),
        other => text(&as_text(other)?),
    }
);

kind!(flag, bool, false, |s| parse_bool(s), |v| text(&as_text(v)?));

kind!(switch, bool, true, |s| parse_bool(s), |v| text(&as_text(
    v
)?));

kind!(
    list,
    Vec<String>,
    false,
    |s| Ok(s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()),
    |v| match v {
        Value::Array(items) => items.iter().map(as_text).collect(),
        other => text(&as_text(other)?),
    }
);

kind!(
    mode,
    u32,
    false,
    |s| {
        let digits = s.trim().trim_start_matches("0o");
        u32::from_str_radix(digits, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("{s:?} is not a file mode such as 0660"))
    },
    |v| text(&as_text(v)?)
);

kind!(
    uids,
    Vec<u32>,
    false,
    |s| s
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|_| format!("{x:?} is not a numeric uid")))
        .collect(),
    |v| match v {
        Value::Array(items) => items
            .iter()
            .map(|i| text(&as_text(i)?))
            .collect::<Result<Vec<Vec<u32>>, String>>()
            .map(|v| v.concat()),
        other => text(&as_text(other)?),
    }
);

kind!(
    policy,
    crate::cache::policy::PolicyKind,
    false,
    |s| match s.trim() {
        "epoch-aware" | "epoch_aware" => Ok(crate::cache::policy::PolicyKind::EpochAware),
        "lru" => Ok(crate::cache::policy::PolicyKind::Lru),
        other => Err(format!(
            "{other:?} is not a disk eviction policy: epoch-aware or lru"
        )),
    },
    |v| text(&as_text(v)?)
);

kind!(
    log_format,
    super::super::LogFormat,
    false,
    |s| match s.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(super::super::LogFormat::Text),
        "json" => Ok(super::super::LogFormat::Json),
        other => Err(format!("{other:?} is not a log format: text or json")),
    },
    |v| text(&as_text(v)?)
);

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}
