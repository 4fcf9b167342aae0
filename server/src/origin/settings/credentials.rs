//! How requests to an origin are signed: the [`Credentials`] a dataset resolves to, and for
//! Azure and GCS, which of the store's own sources will be used.

use std::fmt;

use super::s3_credentials::s3_credentials;
use super::{DatasetConfig, Kind, OriginSettings, Setting, SettingsError, Source};
use crate::env::EnvSource;
use crate::origin::aws::{self, ContainerAuth};

/// How requests to an S3 origin are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A key pair (and session token).
    Static {
        key_id: Setting,
        secret: Setting,
        token: Option<Setting>,
    },
    /// Unsigned requests (a public bucket).
    Unsigned(Source),
    /// A web identity token exchanged at an STS endpoint.
    WebIdentity {
        role_arn: Setting,
        token_file: Setting,
        session_name: String,
        endpoint: Setting,
    },
    /// A container credentials endpoint.
    Container { uri: Setting, auth: ContainerAuth },
    /// The instance metadata service (object_store's provider).
    Instance { endpoint: Option<Setting> },
    /// Azure and GCS: object_store's own chain, described.
    Store(String),
    /// Not signed at all (local files and memory).
    NotNeeded,
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Static { key_id, token, .. } => write!(
                f,
                "access key {} ({}){}",
                key_id.shown(),
                key_id.source,
                if token.is_some() {
                    " with a session token"
                } else {
                    ""
                }
            ),
            Credentials::Unsigned(source) => write!(f, "unsigned requests ({source})"),
            Credentials::WebIdentity {
                role_arn,
                token_file,
                endpoint,
                ..
            } => write!(
                f,
                "web identity: role {} ({}), token file {} ({}), STS {} ({})",
                role_arn.value,
                role_arn.source,
                token_file.value,
                token_file.source,
                endpoint.value,
                endpoint.source
            ),
            Credentials::Container { uri, auth } => write!(
                f,
                "container credentials from {} ({}){}",
                uri.value,
                uri.source,
                match auth {
                    ContainerAuth::None => String::new(),
                    ContainerAuth::Token(_) =>
                        " with AWS_CONTAINER_AUTHORIZATION_TOKEN".to_string(),
                    ContainerAuth::TokenFile(p) => format!(" with token file {}", p.display()),
                }
            ),
            Credentials::Instance { endpoint } => match endpoint {
                Some(e) => write!(f, "instance metadata at {} ({})", e.value, e.source),
                None => f.write_str("instance metadata (169.254.169.254)"),
            },
            Credentials::Store(what) => f.write_str(what),
            Credentials::NotNeeded => f.write_str("none needed"),
        }
    }
}

/// The credentials of an origin of `kind`; `profile` is the selected AWS profile, if any.
pub(super) fn for_kind(
    kind: Kind,
    d: &DatasetConfig,
    env: &dyn EnvSource,
    profile: Option<&(aws::Profile, bool)>,
    out: &OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Credentials, SettingsError> {
    Ok(match kind {
        Kind::S3 => s3_credentials(d, env, profile, out, err)?,
        Kind::Azure => Credentials::Store(describe_store_credentials(
            &out.store,
            &[
                (
                    "azure_storage_use_emulator",
                    "the Azurite emulator's account",
                ),
                ("azure_storage_account_key", "account key"),
                ("azure_storage_sas_key", "SAS token"),
                ("azure_storage_token", "bearer token"),
                (
                    "azure_storage_client_secret",
                    "service principal (client secret)",
                ),
                (
                    "azure_federated_token_file",
                    "workload identity (federated token file)",
                ),
                ("azure_use_azure_cli", "Azure CLI"),
                ("azure_skip_signature", "unsigned requests"),
            ],
            "managed identity (instance metadata)",
        )),
        Kind::Gcs => Credentials::Store(describe_store_credentials(
            &out.store,
            &[
                ("google_service_account", "service account file"),
                ("google_service_account_key", "service account key"),
                (
                    "google_application_credentials",
                    "application credentials file",
                ),
                ("google_bearer_token", "bearer token"),
                ("google_skip_signature", "unsigned requests"),
            ],
            "application default credentials or instance metadata",
        )),
        Kind::File | Kind::Memory => Credentials::NotNeeded,
    })
}

fn describe_store_credentials(store: &[Setting], known: &[(&str, &str)], fallback: &str) -> String {
    for (key, what) in known {
        if let Some(s) = store.iter().rev().find(|s| s.key == *key)
            && !matches!(s.value.as_str(), "false" | "0")
        {
            return format!("{what} ({})", s.source);
        }
    }
    fallback.to_string()
}
