//! Finding, merging and checking the configuration.
//!
//! Order, later wins: embedded defaults, the YAML file, `PIKA_*` environment
//! variables. The file is `--config PATH`, else `$CONFIG_FILE`, else the first
//! of `./pika.yaml`, `./pika.yml`, `/etc/pika.yaml` that exists; with none,
//! the defaults alone run a working single node.
//!
//! Every error names where the bad value came from (the file or the
//! variable), the key and the problem, so an operator fixes it in one try.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Format as _, Serialized};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;

use super::Config;

/// Where configuration comes from. [`Sources::from_process`] reads the real
/// process; tests build one by hand.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `--config PATH`.
    pub flag: Option<PathBuf>,
    /// Every environment variable (only `CONFIG_FILE` and `PIKA_*` are read).
    pub env: Vec<(String, String)>,
    /// Files tried in order when neither the flag nor `CONFIG_FILE` names one.
    pub search: Vec<PathBuf>,
}

impl Sources {
    pub fn from_process(flag: Option<PathBuf>) -> Self {
        Self {
            flag,
            env: std::env::vars().collect(),
            search: vec![
                "pika.yaml".into(),
                "pika.yml".into(),
                "/etc/pika.yaml".into(),
            ],
        }
    }
}

/// A loaded configuration and what is worth telling the operator about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file it came from; `None` = embedded defaults (plus env).
    pub file: Option<PathBuf>,
    /// Unknown keys and other things that do not stop the node.
    pub warnings: Vec<String>,
}

/// A configuration that cannot run. The binary prints it and exits with 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub messages: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.messages.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(message: String) -> Self {
        Self {
            messages: vec![message],
        }
    }
}

pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let file = config_file(sources)?;
    let defaults = Serialized::defaults(Config::default());
    let known = leaves(
        &defaults
            .data()
            .map_err(|e| ConfigError::one(e.to_string()))?,
    );

    let mut figment = Figment::from(defaults);
    if let Some(file) = &file {
        figment = figment.merge(Yaml::file_exact(file));
    }
    let mut warnings = Vec::new();
    for (var, value) in &sources.env {
        let Some(suffix) = var.strip_prefix("PIKA_") else {
            continue;
        };
        let key = suffix.to_ascii_lowercase();
        match known.iter().find(|(k, _)| k.replace('.', "_") == key) {
            Some((path, default)) => {
                figment = figment.merge(EnvVar::new(var, path, value, default))
            }
            // Read elsewhere, not configuration: the fault-test switch.
            None if var == crate::api::TEST_FAULTS_ENV
                || var == pika_replication::replica::TEST_CLOCK_RATE_ENV => {}
            None => warnings.push(format!("unknown environment variable {var} (ignored)")),
        }
    }

    let config: Config = figment
        .extract()
        .map_err(|e| describe(e, file.as_deref()))?;

    let merged = figment.data().map_err(|e| describe(e, file.as_deref()))?;
    let mut unknown = Vec::new();
    if let Some(dict) = merged.get(&Profile::Default) {
        unknown_keys(dict, "", &known, &mut unknown);
    }
    for key in unknown {
        let origin = origin(&figment, &key, file.as_deref());
        warnings.push(format!("unknown key `{key}` in {origin} (ignored)"));
    }
    if config.cluster.security_key.was_number {
        let origin = origin(&figment, "cluster.security_key", file.as_deref());
        // Never echo the key itself: warnings go to the log.
        warnings.push(format!(
            "cluster.security_key in {origin} is a YAML number; its decimal digits are the key \
             (quote it if leading zeros or the exact spelling matter)"
        ));
    }

    let problems: Vec<String> = config
        .problems()
        .into_iter()
        .map(|(key, problem)| {
            format!(
                "{}: key `{key}`: {problem}",
                origin(&figment, key, file.as_deref())
            )
        })
        .collect();
    if !problems.is_empty() {
        return Err(ConfigError { messages: problems });
    }
    Ok(Loaded {
        config,
        file,
        warnings,
    })
}

/// The file to read, if any. A file named explicitly must exist.
fn config_file(sources: &Sources) -> Result<Option<PathBuf>, ConfigError> {
    let from_env = sources
        .env
        .iter()
        .find(|(k, v)| k == "CONFIG_FILE" && !v.is_empty())
        .map(|(_, v)| (PathBuf::from(v), "CONFIG_FILE"));
    let named = sources.flag.clone().map(|p| (p, "--config")).or(from_env);
    if let Some((path, how)) = named {
        if !path.is_file() {
            return Err(ConfigError::one(format!(
                "{}: config file named by {how} does not exist or is not a file",
                path.display()
            )));
        }
        return Ok(Some(path));
    }
    Ok(sources.search.iter().find(|p| p.is_file()).cloned())
}

/// Turns figment's error into "where: key `k`: problem" lines.
fn describe(error: figment::Error, file: Option<&Path>) -> ConfigError {
    let messages = error
        .into_iter()
        .map(|e| {
            let origin = origin_of(e.metadata.as_ref(), file);
            let kind = e.kind.to_string();
            if e.path.is_empty() {
                format!("{origin}: {kind}")
            } else {
                format!("{origin}: key `{}`: {kind}", e.path.join("."))
            }
        })
        .collect();
    ConfigError { messages }
}

/// Who set `key`: the file, an env var, or the defaults.
fn origin(figment: &Figment, key: &str, file: Option<&Path>) -> String {
    origin_of(figment.find_metadata(key), file)
}

/// Names a provider as an operator knows it: the file's path, the variable,
/// or "defaults".
fn origin_of(metadata: Option<&Metadata>, file: Option<&Path>) -> String {
    match metadata {
        Some(m) if m.name.starts_with("environment variable") => m.name.to_string(),
        Some(m) => match &m.source {
            Some(figment::Source::File(path)) => path.display().to_string(),
            _ => "defaults".to_string(),
        },
        None => file.map_or_else(|| "config".to_string(), |p| p.display().to_string()),
    }
}

/// Every leaf key of the defaults (`cluster.dns_addr`, ...) with its value.
fn leaves(data: &Map<Profile, Dict>) -> Vec<(String, Value)> {
    fn walk(dict: &Dict, prefix: &str, out: &mut Vec<(String, Value)>) {
        for (k, v) in dict {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Dict(_, inner) => walk(inner, &key, out),
                other => out.push((key, other.clone())),
            }
        }
    }
    let mut out = Vec::new();
    for dict in data.values() {
        walk(dict, "", &mut out);
    }
    out
}

fn unknown_keys(dict: &Dict, prefix: &str, known: &[(String, Value)], out: &mut Vec<String>) {
    for (k, v) in dict {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let is_leaf = known.iter().any(|(path, _)| *path == key);
        let is_table = known
            .iter()
            .any(|(path, _)| path.starts_with(&format!("{key}.")));
        match v {
            Value::Dict(_, inner) if is_table => unknown_keys(inner, &key, known, out),
            _ if is_leaf || is_table => {}
            _ => out.push(key),
        }
    }
}

/// The YAML format, parsed with serde_norway (serde_yaml is deprecated).
struct Yaml;

impl figment::providers::Format for Yaml {
    type Error = serde_norway::Error;
    const NAME: &'static str = "YAML";

    fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Self::Error> {
        // Parse to a value first: syntax errors then carry line and column,
        // and an empty (or all-comment) file is an empty table, not an error.
        let value: serde_norway::Value = serde_norway::from_str(text)?;
        if value.is_null() {
            return serde_norway::from_value(serde_norway::Value::Mapping(Default::default()));
        }
        serde_norway::from_value(value)
    }
}

/// One `PIKA_*` variable overriding one key. Values of string keys stay
/// strings (`PIKA_CLUSTER_SECURITY_KEY=0123` keeps its zero); others are
/// parsed the way figment parses env values (numbers, booleans).
struct EnvVar {
    name: String,
    key: String,
    value: Value,
}

impl EnvVar {
    fn new(name: &str, key: &str, raw: &str, default: &Value) -> Self {
        let value = match default {
            Value::String(..) => Value::from(raw.to_string()),
            _ => raw.parse().unwrap_or_else(|_| Value::from(raw.to_string())),
        };
        Self {
            name: name.to_string(),
            key: key.to_string(),
            value,
        }
    }
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Build `{a: {b: {c: value}}}` from the inside out.
        let dict = self
            .key
            .rsplit('.')
            .fold(None, |inner: Option<Dict>, segment| {
                let value =
                    inner.map_or_else(|| self.value.clone(), |d| Value::Dict(Tag::Default, d));
                Some(Dict::from([(segment.to_string(), value)]))
            });
        let dict = dict.unwrap_or_default();
        Ok(BTreeMap::from([(Profile::Default, dict)]))
    }
}
