//! Where the server's environment variables come from: the process, or a map in tests (so no
//! test ever calls `std::env::set_var`).

use std::collections::BTreeMap;

/// A source of environment variables.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable with a value (the origins read the cloud SDKs' `AWS_*`, `AZURE_*` and
    /// `GOOGLE_*` families whole).
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.is_empty())
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
