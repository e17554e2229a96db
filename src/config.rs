//! orderfold's settings: what each key means, its default and why. It owns parsing and
//! defaults; `config/orderfold.toml` documents the same keys for operators.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::Millis;

/// The rules' time constants. Changing one changes results: a replay must use the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// How long an unpaid order holds its stock. 5 minutes is the checkout's payment window.
    pub reservation_ttl_ms: Millis,
    /// How long a payment or cancel waits for its OrderPlaced before it is dead-lettered.
    /// 1 hour covers any realistic upstream lag between the order and payment services.
    pub orphan_ttl_ms: Millis,
    /// How long an event id is remembered for dedup, in stream time. 7 days outlives any
    /// producer retry and any sane redelivery after an outage.
    pub dedup_retention_ms: Millis,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            reservation_ttl_ms: 5 * 60 * 1000,
            orphan_ttl_ms: 60 * 60 * 1000,
            dedup_retention_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

/// Bounds on every buffer and batch, so memory stays bounded whatever arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Records buffered per input partition before the partition is paused. 10,000 records of
    /// ~200 bytes is ~2 MB per partition: enough to keep the merge fed between polls.
    pub buffer_records_max: usize,
    /// Records a task processes before it commits. Bounds the work a crash can repeat.
    pub commit_records_max: usize,
    /// SKU commands a SKU task holds while it waits for the order stage's watermark; past it
    /// the task stops reading commands until the watermark moves. 200,000 is a few seconds of
    /// a flash sale's peak.
    pub pending_commands_max: usize,
    /// Expired dedup ids dropped per commit, so one commit after a long pause stays short.
    pub dedup_purge_per_commit_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            buffer_records_max: 10_000,
            commit_records_max: 10_000,
            pending_commands_max: 200_000,
            dedup_purge_per_commit_max: 10_000,
        }
    }
}

/// Local state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Where each task's RocksDB lives (one directory per task).
    pub dir: PathBuf,
    /// fsync the RocksDB WAL at each commit. Off: a process crash loses nothing without it.
    pub sync_commits: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("./orderfold-state"),
            sync_commits: false,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub rules: Rules,
    pub limits: Limits,
    pub state: StateConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.rules;
        if r.reservation_ttl_ms < 0 || r.orphan_ttl_ms < 0 || r.dedup_retention_ms < 0 {
            return Err(ConfigError::Invalid(
                "rule durations must not be negative".into(),
            ));
        }
        let l = &self.limits;
        if l.buffer_records_max == 0 || l.commit_records_max == 0 || l.pending_commands_max == 0 {
            return Err(ConfigError::Invalid("limits must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses_to_the_defaults() {
        let text = include_str!("../config/orderfold.toml");
        let parsed = Config::from_toml(text, Path::new("config/orderfold.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::from_toml("[rules]\nreservation_ttl = 5", Path::new("x")).is_err());
    }
}
