//! The S3 credential chain: the file's keys, AWS profiles, unsigned requests, the environment's
//! keys, web identity, container credentials and instance metadata, in that order.

use std::path::PathBuf;

use super::{
    Credentials, DatasetConfig, OriginSettings, Setting, SettingsError, Source, parse_bool,
};
use crate::env::EnvSource;
use crate::origin::aws::{self, ContainerAuth};

/// The S3 credential chain: the file's keys, the file's profile, unsigned, the environment's
/// keys, the profile's keys or web identity, web identity from the environment, container
/// credentials, instance metadata.
pub(super) fn s3_credentials(
    d: &DatasetConfig,
    env: &dyn EnvSource,
    profile: Option<&(aws::Profile, bool)>,
    out: &OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Credentials, SettingsError> {
    let file_key = |k: &str| Source::File(format!("datasets.{}.{k}", d.name));
    let pair = |id: Option<Setting>,
                secret: Option<Setting>,
                token: Option<Setting>,
                what: &str| match (id, secret) {
        (Some(key_id), Some(secret)) => Ok(Credentials::Static {
            key_id,
            secret,
            token,
        }),
        (Some(id), None) => Err(err(format!(
            "{what}: access key id ({}) without a secret access key",
            id.source
        ))),
        (None, Some(s)) => Err(err(format!(
            "{what}: secret access key ({}) without an access key id",
            s.source
        ))),
        (None, None) => Err(err(format!("{what}: a session token without a key pair"))),
    };

    // 1. The file's own keys.
    let file_id = d
        .access_key_id
        .clone()
        .map(|v| Setting::new("aws_access_key_id", v, file_key("access_key_id")));
    let file_secret = d
        .secret_access_key
        .clone()
        .map(|v| Setting::new("aws_secret_access_key", v.0, file_key("secret_access_key")));
    let file_token = d
        .session_token
        .clone()
        .map(|v| Setting::new("aws_session_token", v.0, file_key("session_token")));
    if file_id.is_some() || file_secret.is_some() || file_token.is_some() {
        return pair(
            file_id,
            file_secret,
            file_token,
            "the config file's credentials",
        );
    }

    // 2. A profile the file names.
    if let Some((p, true)) = profile
        && d.profile.is_some()
    {
        return profile_credentials(p, out, err)?.ok_or_else(|| {
            err(format!(
                "profile {:?} (datasets.{}.profile) has no credentials (aws_access_key_id and aws_secret_access_key, or role_arn and web_identity_token_file)",
                p.name, d.name
            ))
        });
    }

    // 3. Unsigned requests.
    let skip = d
        .skip_signature
        .map(|b| (b, file_key("skip_signature")))
        .or_else(|| {
            env.var("AWS_SKIP_SIGNATURE")
                .and_then(|v| parse_bool(&v))
                .map(|b| (b, Source::Env("AWS_SKIP_SIGNATURE".into())))
        });
    if let Some((true, source)) = skip {
        return Ok(Credentials::Unsigned(source));
    }

    // 4. The environment's keys.
    let env_setting = |var: &str, key: &str| {
        env.var(var)
            .map(|v| Setting::new(key, v, Source::Env(var.into())))
    };
    let env_id = env_setting("AWS_ACCESS_KEY_ID", "aws_access_key_id");
    let env_secret = env_setting("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key");
    let env_token = env_setting("AWS_SESSION_TOKEN", "aws_session_token");
    if env_id.is_some() || env_secret.is_some() {
        return pair(
            env_id,
            env_secret,
            env_token,
            "the environment's credentials",
        );
    }

    // 5. The selected profile (AWS_PROFILE, or `default` when the files have one).
    if let Some((p, explicit)) = profile {
        match profile_credentials(p, out, err)? {
            Some(c) => return Ok(c),
            None if *explicit => {
                return Err(err(format!(
                    "profile {:?} (AWS_PROFILE) has no credentials (aws_access_key_id and aws_secret_access_key, or role_arn and web_identity_token_file)",
                    p.name
                )));
            }
            None => {}
        }
    }

    // 6. Web identity from the environment (Kubernetes IRSA).
    let role = env_setting("AWS_ROLE_ARN", "aws_role_arn");
    let token_file = env_setting("AWS_WEB_IDENTITY_TOKEN_FILE", "aws_web_identity_token_file");
    match (role, token_file) {
        (Some(role_arn), Some(token_file)) => {
            return web_identity(
                role_arn,
                token_file,
                env.var("AWS_ROLE_SESSION_NAME"),
                env,
                out,
                err,
            );
        }
        (Some(r), None) => {
            return Err(err(format!(
                "AWS_ROLE_ARN ({}) is set without AWS_WEB_IDENTITY_TOKEN_FILE",
                r.value
            )));
        }
        (None, Some(t)) => {
            return Err(err(format!(
                "AWS_WEB_IDENTITY_TOKEN_FILE ({}) is set without AWS_ROLE_ARN",
                t.value
            )));
        }
        (None, None) => {}
    }

    // 7. Container credentials.
    let full = env_setting(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "container_credentials_uri",
    );
    let relative = env
        .var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .map(|rel| {
            Setting::new(
                "container_credentials_uri",
                format!("http://169.254.170.2{rel}"),
                Source::Env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".into()),
            )
        });
    if let Some(uri) = relative.or(full) {
        let parsed = url::Url::parse(&uri.value)
            .map_err(|e| err(format!("{} {:?} is not a URL: {e}", uri.source, uri.value)))?;
        if !aws::container_uri_allowed(&parsed) {
            return Err(err(format!(
                "{} {} must be https:// or a loopback or link-local http:// address",
                uri.source, uri.value
            )));
        }
        let auth = match (
            env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        ) {
            (Some(file), _) => ContainerAuth::TokenFile(PathBuf::from(file)),
            (None, Some(token)) => ContainerAuth::Token(token),
            (None, None) => ContainerAuth::None,
        };
        return Ok(Credentials::Container { uri, auth });
    }

    // 8. Instance metadata, unless switched off.
    if env
        .var("AWS_EC2_METADATA_DISABLED")
        .and_then(|v| parse_bool(&v))
        .unwrap_or(false)
    {
        return Err(err(
            "no credentials: set access_key_id and secret_access_key in the config file, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CONTAINER_CREDENTIALS_FULL_URI, or skip_signature = true for a public bucket (instance metadata is off: AWS_EC2_METADATA_DISABLED)".into(),
        ));
    }
    Ok(Credentials::Instance {
        endpoint: env_setting("AWS_METADATA_ENDPOINT", "aws_metadata_endpoint"),
    })
}

/// A profile's own credentials: a key pair, or a role with a web identity token file.
fn profile_credentials(
    p: &aws::Profile,
    out: &OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Option<Credentials>, SettingsError> {
    let source = |key: &str| Source::Profile {
        profile: p.name.clone(),
        file: p.file_of(key),
    };
    let get = |key: &str, as_key: &str| p.get(key).map(|v| Setting::new(as_key, v, source(key)));
    let id = get("aws_access_key_id", "aws_access_key_id");
    let secret = get("aws_secret_access_key", "aws_secret_access_key");
    if id.is_some() || secret.is_some() {
        return match (id, secret) {
            (Some(key_id), Some(secret)) => Ok(Some(Credentials::Static {
                key_id,
                secret,
                token: get("aws_session_token", "aws_session_token"),
            })),
            _ => Err(err(format!(
                "profile {:?} has only one of aws_access_key_id and aws_secret_access_key",
                p.name
            ))),
        };
    }
    if let (Some(role), Some(token)) = (
        get("role_arn", "aws_role_arn"),
        get("web_identity_token_file", "aws_web_identity_token_file"),
    ) {
        let env = std::collections::BTreeMap::<String, String>::new();
        return web_identity(
            role,
            token,
            p.get("role_session_name").map(str::to_string),
            &env,
            out,
            err,
        )
        .map(Some);
    }
    for unsupported in [
        "credential_process",
        "sso_session",
        "sso_start_url",
        "source_profile",
    ] {
        if p.get(unsupported).is_some() {
            return Err(err(format!(
                "profile {:?} uses {unsupported}, which shardcache does not run; export the credentials (aws configure export-credentials --profile {} --format env) or use keys, web identity or container credentials",
                p.name, p.name
            )));
        }
    }
    Ok(None)
}

fn web_identity(
    role_arn: Setting,
    token_file: Setting,
    session_name: Option<String>,
    env: &dyn EnvSource,
    out: &OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Credentials, SettingsError> {
    if !std::path::Path::new(&token_file.value).is_file() {
        return Err(err(format!(
            "web identity token file {} ({}) does not exist",
            token_file.value, token_file.source
        )));
    }
    // AWS_ENDPOINT_URL_STS, else the generic AWS_ENDPOINT_URL (an in-cluster S3 server
    // answers STS on its own endpoint), else the regional AWS endpoint.
    let region = out
        .get("aws_region")
        .or_else(|| out.get("aws_default_region"))
        .map_or("us-east-1".to_string(), |s| s.value.clone());
    let endpoint = env
        .var("AWS_ENDPOINT_URL_STS")
        .map(|v| {
            Setting::new(
                "sts_endpoint",
                v,
                Source::Env("AWS_ENDPOINT_URL_STS".into()),
            )
        })
        .or_else(|| {
            env.var("AWS_ENDPOINT_URL")
                .map(|v| Setting::new("sts_endpoint", v, Source::Env("AWS_ENDPOINT_URL".into())))
        })
        .unwrap_or_else(|| {
            Setting::new(
                "sts_endpoint",
                format!("https://sts.{region}.amazonaws.com"),
                Source::Default,
            )
        });
    if url::Url::parse(&endpoint.value).is_err() {
        return Err(err(format!(
            "STS endpoint {:?} ({}) is not a URL",
            endpoint.value, endpoint.source
        )));
    }
    Ok(Credentials::WebIdentity {
        role_arn,
        token_file,
        session_name: session_name.unwrap_or_else(|| "shardcache".into()),
        endpoint,
    })
}
