//! How requests reach a remote origin, checked: the endpoint and plain HTTP, the client's
//! timeouts, the trust roots for HTTPS, and the proxy.

use super::{DatasetConfig, Kind, OriginSettings, Setting, SettingsError, Source, parse_bool};
use crate::env::EnvSource;

/// Plain-HTTP endpoints: allowed when asked for, or when the endpoint itself says http://.
/// Returns the effective endpoint.
pub(super) fn endpoint(
    kind: Kind,
    out: &mut OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Option<Setting>, SettingsError> {
    let endpoint_key = kind.endpoint_key().expect("remote kinds have endpoints");
    let endpoint = match kind {
        Kind::S3 => out
            .get("aws_endpoint_url_s3")
            .or_else(|| out.get("aws_endpoint"))
            .cloned(),
        _ => out.get(endpoint_key).cloned(),
    };
    let allow_http = out.get("allow_http").cloned();
    if let Some(ep) = &endpoint {
        let parsed = url::Url::parse(&ep.value).map_err(|e| {
            err(format!(
                "endpoint {:?} ({}) is not a URL: {e}",
                ep.value, ep.source
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(err(format!(
                "endpoint {:?} ({}) must start with http:// or https://",
                ep.value, ep.source
            )));
        }
        if parsed.scheme() == "http" {
            match &allow_http {
                None => out.store.push(Setting::new(
                    "allow_http",
                    "true",
                    Source::Implied(format!("the http:// endpoint ({})", ep.source)),
                )),
                Some(a) if !parse_bool(&a.value).unwrap_or(false) => {
                    return Err(err(format!(
                        "endpoint {} ({}) is plain HTTP but allow_http is {:?} ({}): set allow_http = true, or use https://",
                        ep.value, ep.source, a.value, a.source
                    )));
                }
                Some(_) => {}
            }
        }
    }
    if let Some(a) = &allow_http
        && parse_bool(&a.value).is_none()
    {
        return Err(err(format!(
            "allow_http {:?} ({}) is not true or false",
            a.value, a.source
        )));
    }
    Ok(endpoint)
}

/// The client's timeouts are durations.
pub(super) fn durations(
    out: &OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<(), SettingsError> {
    for key in [
        "connect_timeout",
        "timeout",
        "pool_idle_timeout",
        "read_timeout",
    ] {
        if let Some(s) = out.get(key)
            && humantime::parse_duration(&s.value).is_err()
        {
            return Err(err(format!(
                "{key} {:?} ({}) is not a duration such as 5s",
                s.value, s.source
            )));
        }
    }
    Ok(())
}

/// Trust: an extra CA bundle, and the platform roots the TLS stack reads.
pub(super) fn trust(
    d: &DatasetConfig,
    kind: Kind,
    env: &dyn EnvSource,
    out: &mut OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<(), SettingsError> {
    let file_key = |k: &str| Source::File(format!("datasets.{}.{k}", d.name));
    out.ca_bundle = match (
        &d.ca_bundle,
        env.var("AWS_CA_BUNDLE").filter(|_| kind == Kind::S3),
    ) {
        (Some(p), _) => Some(Setting::new(
            "ca_bundle",
            p.display().to_string(),
            file_key("ca_bundle"),
        )),
        (None, Some(p)) => Some(Setting::new(
            "ca_bundle",
            p,
            Source::Env("AWS_CA_BUNDLE".into()),
        )),
        (None, None) => None,
    };
    if let Some(ca) = &out.ca_bundle {
        let pem = std::fs::read(&ca.value)
            .map_err(|e| err(format!("CA bundle {} ({}): {e}", ca.value, ca.source)))?;
        match object_store::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => {}
            _ => {
                return Err(err(format!(
                    "CA bundle {} ({}) holds no PEM certificate",
                    ca.value, ca.source
                )));
            }
        }
    }
    for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
        if let Some(v) = env.var(var) {
            let path = std::path::Path::new(&v);
            let ok = if var == "SSL_CERT_FILE" {
                std::fs::read(path).is_ok_and(|pem| {
                    object_store::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty())
                })
            } else {
                path.is_dir()
            };
            if !ok {
                return Err(err(format!(
                    "{var}={v} is not a readable PEM {}: HTTPS origins would trust nothing",
                    if var == "SSL_CERT_FILE" {
                        "file of certificates"
                    } else {
                        "directory"
                    }
                )));
            }
            out.platform_roots
                .push(Setting::new(var.to_lowercase(), v, Source::Env(var.into())));
        }
    }
    Ok(())
}

/// The proxy: an explicit proxy_url, else the usual variables (read by the HTTP client).
pub(super) fn proxy(
    env: &dyn EnvSource,
    endpoint: Option<&Setting>,
    out: &mut OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<(), SettingsError> {
    out.proxy = match out.get("proxy_url").cloned() {
        Some(p) => Some(p),
        None => {
            let https = endpoint.is_none_or(|e| !e.value.starts_with("http://"));
            let vars: &[&str] = if https {
                &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
            } else {
                &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            };
            first_var(env, vars).map(|(var, v)| Setting::new("proxy_url", v, Source::Env(var)))
        }
    };
    if out.proxy.is_some()
        && out.get("proxy_excludes").is_none()
        && let Some((var, v)) = first_var(env, &["NO_PROXY", "no_proxy"])
    {
        out.store
            .push(Setting::new("proxy_excludes", v, Source::Env(var)));
    }
    if let Some(p) = &out.proxy
        && url::Url::parse(&p.value).is_err()
    {
        return Err(err(format!(
            "proxy {:?} ({}) is not a URL such as http://proxy:3128",
            p.shown(),
            p.source
        )));
    }
    Ok(())
}

fn first_var(env: &dyn EnvSource, vars: &[&str]) -> Option<(String, String)> {
    vars.iter()
        .find_map(|v| env.var(v).map(|value| (v.to_string(), value)))
}
