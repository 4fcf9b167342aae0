//! Server configuration: parse, then normalise, then validate.
//!
//! Every setting can come from four places; the first that sets it wins: a command-line flag,
//! an environment variable (`SHARDCACHE_` + the flag in UPPER_SNAKE), the TOML file named by
//! `--config`, the default. [`table`] defines every setting once; flags, variables, TOML keys,
//! `--help` and [`Config`]'s fields all come from it. Values are parsed by their kind
//! ([`kinds`]), and an error names where the bad value came from. The environment is read
//! through [`EnvSource`], so tests pass a map instead of touching the process environment.
//!
//! Datasets merge by name across sources: a `--dataset imagenet=…` flag replaces the file's
//! `imagenet` entry and keeps the others.

pub mod kinds;
pub mod table;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use crate::env::{EnvSource, ProcessEnv};
pub use crate::origin::dataset::{DatasetConfig, Secret};
pub use crate::units::{parse_duration, parse_size};
pub use table::{Config, SETTINGS, SettingInfo};

/// A configuration error that names the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
            source: None,
        }
    }

    /// The same error, keeping what caused it.
    fn because(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> ConfigError {
        self.source = Some(Box::new(cause));
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Settings given on the command line, as raw text: the `serve` flags.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// Setting flags by key (`"ram_cache" → "8GiB"`).
    pub scalars: BTreeMap<String, String>,
    /// `--dataset NAME=URL`, in order.
    pub datasets: Vec<String>,
}

impl clap::Args for Overrides {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd
            .arg(
                clap::Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("TOML configuration file [env: SHARDCACHE_CONFIG]"),
            )
            .arg(
                clap::Arg::new("dataset")
                    .long("dataset")
                    .value_name("NAME=URL")
                    .action(clap::ArgAction::Append)
                    .help("A dataset (repeatable); URL is file:///…, s3://…, gs://…, az://… or memory:// [env: SHARDCACHE_DATASET, comma-separated] [default: local=./data]"),
            );
        for s in SETTINGS {
            let help = s.help.trim().trim_end_matches('.');
            let help = if help.contains("[default:") {
                format!("{help} [env: {}]", s.env())
            } else {
                format!("{help} [env: {}] [default: {}]", s.env(), shown_default(s))
            };
            let mut arg = clap::Arg::new(s.key)
                .long(s.key.replace('_', "-"))
                .value_name(s.value_name)
                .help(help);
            if s.switch {
                arg = arg.num_args(0..=1).default_missing_value("true");
            }
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

fn shown_default(s: &SettingInfo) -> &'static str {
    match s.default {
        "" => "none",
        other => other,
    }
}

impl clap::FromArgMatches for Overrides {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut o = Overrides {
            config_file: m.get_one::<PathBuf>("config").cloned(),
            ..Overrides::default()
        };
        o.update_from_arg_matches(m)?;
        Ok(o)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        if let Some(c) = m.get_one::<PathBuf>("config") {
            self.config_file = Some(c.clone());
        }
        if let Some(ds) = m.get_many::<String>("dataset") {
            self.datasets.extend(ds.cloned());
        }
        for s in SETTINGS {
            if let Some(v) = m.get_one::<String>(s.key) {
                self.scalars.insert(s.key.to_string(), v.clone());
            }
        }
        Ok(())
    }
}

/// Where each setting's value may come from, in precedence order.
pub(crate) struct Sources<'a> {
    flags: &'a Overrides,
    env: &'a dyn EnvSource,
    file: &'a toml::Table,
}

impl Sources<'_> {
    /// The value of `key`: the flag's, else the variable's, else the file's, else `default`.
    fn pick<T>(
        &self,
        key: &str,
        default: &str,
        text: fn(&str) -> Result<T, String>,
        toml: fn(&toml::Value) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let named = |source: String, r: Result<T, String>| {
            r.map_err(|e| ConfigError::new(format!("{source}: {e}")))
        };
        if let Some(v) = self.flags.scalars.get(key) {
            return named(format!("--{}", key.replace('_', "-")), text(v));
        }
        let var = format!("SHARDCACHE_{}", key.to_ascii_uppercase());
        if let Some(v) = self.env.var(&var) {
            return named(var, text(&v));
        }
        if let Some(v) = self.file.get(key) {
            return named(format!("{key} in the config file"), toml(v));
        }
        named(format!("the default of {key}"), text(default))
    }
}

/// Smallest and largest block sizes a dataset may use.
pub const MIN_BLOCK_SIZE: u64 = 64 * 1024;
pub const MAX_BLOCK_SIZE: u64 = shardcache_proto::frame::MAX_DATA_CHUNK as u64;

/// The dataset served when none is configured anywhere.
pub const DEFAULT_DATASET: &str = "local";
pub const DEFAULT_DATASET_DIR: &str = "./data";

impl Default for Config {
    fn default() -> Config {
        let (flags, file) = (Overrides::default(), toml::Table::new());
        let env = BTreeMap::<String, String>::new();
        let sources = Sources {
            flags: &flags,
            env: &env,
            file: &file,
        };
        Config::resolve(&sources).expect("the table's defaults parse")
    }
}

impl Config {
    /// Load from flags, environment and file, then normalise and validate.
    pub fn load(overrides: &Overrides, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let file = overrides
            .config_file
            .clone()
            .or_else(|| env.var("SHARDCACHE_CONFIG").map(PathBuf::from));
        let file_text = match &file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
                    .because(e)
            })?),
            None => None,
        };
        Config::from_sources(file_text.as_deref(), overrides, env)
    }

    /// Merge the given TOML text (if any), environment and flags.
    pub fn from_sources(
        file_text: Option<&str>,
        overrides: &Overrides,
        env: &dyn EnvSource,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = match file_text {
            Some(text) => toml::from_str(text)
                .map_err(|e| ConfigError::new(format!("invalid config file: {e}")).because(e))?,
            None => toml::Table::new(),
        };
        let file_datasets = match table.remove("datasets") {
            Some(value) => Vec::<DatasetConfig>::deserialize(value)
                .map_err(|e| ConfigError::new(format!("invalid [[datasets]]: {e}")).because(e))?,
            None => Vec::new(),
        };
        if let Some(unknown) = table
            .keys()
            .find(|k| !SETTINGS.iter().any(|s| s.key == k.as_str()))
        {
            let close = SETTINGS
                .iter()
                .min_by_key(|s| edit_distance(s.key, unknown))
                .filter(|s| edit_distance(s.key, unknown) <= 3)
                .map(|s| format!(" (did you mean {}?)", s.key))
                .unwrap_or_default();
            return Err(ConfigError::new(format!(
                "unknown key {unknown} in the config file{close}"
            )));
        }
        let mut config = Config::resolve(&Sources {
            flags: overrides,
            env,
            file: &table,
        })?;

        // Datasets: file, then environment, then flags, later ones replacing by name.
        let mut datasets: Vec<DatasetConfig> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for d in file_datasets {
            if !seen.insert(d.name.clone()) {
                return Err(ConfigError::new(format!(
                    "dataset {:?} is defined twice in the config file",
                    d.name
                )));
            }
            datasets.push(d);
        }
        let env_specs: Vec<String> = env
            .var("SHARDCACHE_DATASET")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for (source, spec) in env_specs
            .iter()
            .map(|s| ("SHARDCACHE_DATASET", s))
            .chain(overrides.datasets.iter().map(|s| ("--dataset", s)))
        {
            let Some((name, url)) = spec.split_once('=') else {
                return Err(ConfigError::new(format!(
                    "{source} {spec:?}: expected NAME=URL, e.g. imagenet=s3://bucket/imagenet/"
                )));
            };
            let d = DatasetConfig::new(name.trim(), url.trim());
            match datasets.iter_mut().find(|x| x.name == d.name) {
                Some(existing) => *existing = d,
                None => datasets.push(d),
            }
        }
        config.datasets = datasets;
        config.normalise();
        config.validate()?;
        Ok(config)
    }

    fn normalise(&mut self) {
        if self.datasets.is_empty() {
            self.datasets
                .push(DatasetConfig::new(DEFAULT_DATASET, default_dataset_url()));
        }
        if self.node_id.as_deref().is_none_or(str::is_empty) {
            self.node_id = Some(hostname());
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_block_size("block_size", self.block_size)?;
        let (lo, hi) = (
            u64::from(crate::peer::MIN_CHAIN_CHUNK),
            u64::from(crate::peer::MAX_CHAIN_CHUNK),
        );
        if !(lo..=hi).contains(&self.chain_chunk) {
            return Err(ConfigError::new(format!(
                "chain_chunk of {} bytes is outside {lo}..={hi} (64KiB to 4MiB)",
                self.chain_chunk
            )));
        }
        if self.weight > crate::cluster::MAX_WEIGHT {
            return Err(ConfigError::new(format!(
                "weight {} is above the maximum, {}",
                self.weight,
                crate::cluster::MAX_WEIGHT
            )));
        }
        for d in &self.datasets {
            shardcache_proto::path::validate_dataset(&d.name)
                .map_err(|e| ConfigError::new(format!("dataset {:?}: {e}", d.name)))?;
            if let Some(bs) = d.block_size {
                check_block_size(&format!("datasets.{}.block_size", d.name), bs)?;
            }
            if d.origin.is_empty() {
                return Err(ConfigError::new(format!(
                    "dataset {:?}: empty origin URL",
                    d.name
                )));
            }
        }
        if self.disk_cache.is_some() && self.disk_cache_size.is_none() {
            return Err(ConfigError::new(
                "disk_cache needs disk_cache_size: the disk tier's byte budget, e.g. 500GiB",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::new(
                "tls_cert and tls_key must be given together",
            ));
        }
        if self.tls_ca.is_some() && (self.tls_cert.is_none() || self.quic_listen.is_none()) {
            return Err(ConfigError::new(
                "tls_ca (members authenticate with certificates) needs tls_cert, tls_key and quic_listen: members talk over QUIC with mutual TLS",
            ));
        }
        if self.quic_listen.is_some() && self.tls_cert.is_none() && !self.insecure_dev_tls {
            return Err(ConfigError::new(
                "quic_listen needs a certificate: set tls_cert and tls_key, or insecure_dev_tls for local trials",
            ));
        }
        if let Some(dns) = &self.peer_dns
            && dns
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(ConfigError::new(format!(
                "peer_dns {dns:?}: expected NAME:PORT, e.g. shardcache-headless.ml.svc:7070"
            )));
        }
        if self.peer_probe_interval.is_zero() || self.peer_timeout.is_zero() {
            return Err(ConfigError::new(
                "peer_probe_interval and peer_timeout must be longer than zero",
            ));
        }
        if self.origin_concurrency == 0 {
            return Err(ConfigError::new("origin_concurrency must be at least 1"));
        }
        if self.response_buffer < self.connection_buffer.max(1) {
            return Err(ConfigError::new(format!(
                "response_buffer ({} bytes) must be at least connection_buffer ({} bytes): it bounds all connections together",
                self.response_buffer, self.connection_buffer
            )));
        }
        if self.max_connections == 0 || self.max_requests_per_connection == 0 {
            return Err(ConfigError::new(
                "max_connections and max_requests_per_connection must be at least 1",
            ));
        }
        Ok(())
    }

    /// Block size of a dataset: its own, else the server default.
    pub fn dataset_block_size(&self, d: &DatasetConfig) -> u64 {
        d.block_size.unwrap_or(self.block_size)
    }

    /// Revalidation interval of a dataset: its own, else the server default.
    pub fn dataset_metadata_ttl(&self, d: &DatasetConfig) -> Duration {
        d.metadata_ttl.unwrap_or(self.metadata_ttl)
    }
}

fn default_dataset_url() -> String {
    let dir = std::env::current_dir()
        .map(|cwd| cwd.join("data"))
        .unwrap_or_else(|_| PathBuf::from(DEFAULT_DATASET_DIR));
    format!("file://{}", dir.display())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "shardcache".to_string())
}

fn check_block_size(field: &str, size: u64) -> Result<(), ConfigError> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
        return Err(ConfigError::new(format!(
            "{field} of {size} bytes is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE} (64KiB to 64MiB)"
        )));
    }
    Ok(())
}

/// Levenshtein distance, for suggesting a key when one is misspelt.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
