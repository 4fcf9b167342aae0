//! The store keys of one origin, layer by layer: defaults, the selected AWS profile, the
//! environment and the file's keys, merged key by key.

use std::path::PathBuf;
use std::time::Duration;

use super::{DatasetConfig, Kind, OriginSettings, Setting, SettingsError, Source};
use crate::env::EnvSource;
use crate::origin::aws;

/// S3 keys that make up a credential or select a credential source: resolved here, as one
/// unit, never passed through piecemeal.
const S3_CREDENTIAL_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_role_arn",
    "aws_role_session_name",
    "aws_web_identity_token_file",
    "aws_endpoint_url_sts",
    "aws_container_credentials_relative_uri",
    "aws_container_credentials_full_uri",
    "aws_container_authorization_token_file",
    "aws_metadata_endpoint",
    "aws_skip_signature",
];

/// Keys that name one setting: the later-applied, more specific name wins within a source;
/// a higher source's member replaces every member from lower sources.
fn group_of(key: &str) -> &str {
    match key {
        "aws_endpoint" | "aws_endpoint_url_s3" => "endpoint",
        "aws_region" | "aws_default_region" => "region",
        other => other,
    }
}

/// Order within the environment: generic names first, so the specific one is applied last.
fn env_rank(var: &str) -> u8 {
    match var {
        "AWS_ENDPOINT" => 0,
        "AWS_ENDPOINT_URL" | "AWS_DEFAULT_REGION" => 1,
        _ => 2,
    }
}

/// Fill `out.store` from the layers of dataset `d`, whose store reads variables named `prefix*`;
/// the selected AWS profile, and whether it was selected explicitly, go on to the credentials.
pub(super) fn merge(
    d: &DatasetConfig,
    kind: Kind,
    prefix: &str,
    env: &dyn EnvSource,
    out: &mut OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Option<(aws::Profile, bool)>, SettingsError> {
    let file_key = |k: &str| Source::File(format!("datasets.{}.{k}", d.name));

    // Defaults.
    let connect = d
        .connect_timeout
        .unwrap_or(Duration::from_secs(5).min(out.first_byte_timeout));
    let mut layered: Vec<Setting> = vec![
        Setting::new(
            "connect_timeout",
            humantime::format_duration(connect).to_string(),
            if d.connect_timeout.is_some() {
                file_key("connect_timeout")
            } else {
                Source::Default
            },
        ),
        // A backstop behind the origin's own deadlines, which name what timed out.
        Setting::new(
            "timeout",
            humantime::format_duration(out.request_timeout + Duration::from_secs(2)).to_string(),
            Source::Implied("request_timeout".into()),
        ),
    ];

    // The AWS profile: its region and endpoint, below the environment.
    let mut profile = None;
    if kind == Kind::S3 {
        let (name, source) = match (&d.profile, env.var("AWS_PROFILE")) {
            (Some(p), _) => (p.clone(), Some(file_key("profile"))),
            (None, Some(p)) => (p, Some(Source::Env("AWS_PROFILE".into()))),
            (None, None) => match env.var("AWS_DEFAULT_PROFILE") {
                Some(p) => (p, Some(Source::Env("AWS_DEFAULT_PROFILE".into()))),
                None => ("default".to_string(), None),
            },
        };
        let loaded = aws::load_profile(env, &name).map_err(|e| err(format!("profile: {e}")))?;
        if loaded.is_none()
            && let Some(source) = &source
        {
            let (config, creds) = aws::profile_files(env);
            let shown =
                |p: Option<PathBuf>| p.map_or("(no HOME)".into(), |p| p.display().to_string());
            return Err(err(format!(
                "profile {name:?} ({source}) is in neither {} nor {}",
                shown(config),
                shown(creds)
            )));
        }
        if let Some(p) = &loaded {
            for (pkey, skey) in [("region", "aws_region"), ("endpoint_url", "aws_endpoint")] {
                if let Some(v) = p.get(pkey) {
                    layered.push(Setting::new(
                        skey,
                        v,
                        Source::Profile {
                            profile: p.name.clone(),
                            file: p.file_of(pkey),
                        },
                    ));
                }
            }
        }
        profile = loaded.map(|p| (p, source.is_some()));
    }

    // The environment.
    let mut env_settings: Vec<(u8, Setting)> = Vec::new();
    for (var, value) in env.vars() {
        if !var.starts_with(prefix) || value.is_empty() {
            continue;
        }
        if let Some(key) = kind.canonical(&var) {
            if kind == Kind::S3 && S3_CREDENTIAL_KEYS.contains(&key.as_str()) {
                continue;
            }
            env_settings.push((env_rank(&var), Setting::new(key, value, Source::Env(var))));
        }
    }
    if kind == Kind::Gcs
        && let Some(v) = env.var("SERVICE_ACCOUNT")
    {
        env_settings.push((
            2,
            Setting::new(
                "google_service_account",
                v,
                Source::Env("SERVICE_ACCOUNT".into()),
            ),
        ));
    }
    env_settings.sort_by(|a, b| {
        (group_of(&a.1.key), a.0, &a.1.key).cmp(&(group_of(&b.1.key), b.0, &b.1.key))
    });
    layered.extend(env_settings.into_iter().map(|(_, s)| s));

    // The file's keys, highest.
    let endpoint_key = kind.endpoint_key().expect("remote kinds have endpoints");
    let mut file: Vec<Setting> = Vec::new();
    let mut named = |key: &str, toml: &str, value: Option<String>| {
        if let Some(v) = value {
            file.push(Setting::new(key, v, file_key(toml)));
        }
    };
    named(endpoint_key, "endpoint", d.endpoint.clone());
    named("aws_region", "region", d.region.clone());
    named(
        "allow_http",
        "allow_http",
        d.allow_http.map(|b| b.to_string()),
    );
    named("proxy_url", "proxy_url", d.proxy_url.clone());
    named("proxy_excludes", "proxy_excludes", d.proxy_excludes.clone());
    if kind != Kind::S3 {
        let key = kind.skip_signature_key().expect("remote kinds sign");
        named(
            key,
            "skip_signature",
            d.skip_signature.map(|b| b.to_string()),
        );
    }
    named(
        "aws_virtual_hosted_style_request",
        "virtual_hosted_style",
        d.virtual_hosted_style.map(|b| b.to_string()),
    );
    for (k, v) in &d.options {
        let Some(key) = kind.canonical(k) else {
            return Err(err(format!(
                "datasets.{}.options.{k} is not a setting of {} origins",
                d.name,
                kind.name()
            )));
        };
        if kind == Kind::S3 && S3_CREDENTIAL_KEYS.contains(&key.as_str()) {
            return Err(err(format!(
                "datasets.{}.options.{k}: credentials are set with access_key_id, secret_access_key, session_token, profile or skip_signature, or the AWS_* variables",
                d.name
            )));
        }
        file.push(Setting::new(
            key,
            v.clone(),
            Source::File(format!("datasets.{}.options.{k}", d.name)),
        ));
    }
    layered.extend(file);

    // Key by key: the setting applied last wins its group (the file over the environment
    // over the profile over defaults; within the environment, the more specific name).
    let mut kept: Vec<Setting> = Vec::new();
    let mut seen_groups: Vec<String> = Vec::new();
    for s in layered.into_iter().rev() {
        let group = group_of(&s.key).to_string();
        if seen_groups.contains(&group) {
            continue;
        }
        seen_groups.push(group);
        kept.push(s);
    }
    kept.reverse();
    out.store = kept;
    Ok(profile)
}
