//! orderfold's settings: what each key means, its default and why. It owns parsing and
//! defaults; `config/orderfold.toml` documents the same keys for operators.

use std::collections::BTreeMap;
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
    /// How long an order id's state (order, tracking, SKU reservations) is kept, in stream
    /// time, after its last change left it final: delivered or returned and paid, cancelled,
    /// expired or payment failed, or a tracking-only id delivered or returned. Then it is
    /// forgotten, with tombstones on the changelogs, and a later event for it is an event for
    /// an unknown order. 30 days outlives returns and chargeback disputes of an ordinary shop
    /// while bounding disk, changelogs and restore time. 0 keeps everything.
    pub final_retention_ms: Millis,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            reservation_ttl_ms: 5 * 60 * 1000,
            orphan_ttl_ms: 60 * 60 * 1000,
            dedup_retention_ms: 7 * 24 * 60 * 60 * 1000,
            final_retention_ms: 30 * 24 * 60 * 60 * 1000,
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
    /// Retention deadlines (`rules.final_retention_ms`) an order task holds in memory: the
    /// earliest ones, read from its `retention` store a window at a time. The store holds a
    /// month of final orders; memory holds only the next ones due.
    pub forget_timers_cached_max: usize,
    /// Changelog records a restore applies per RocksDB WriteBatch.
    pub restore_batch_records_max: usize,
    /// Largest input record value read; a larger one is dead-lettered (`validation`) without
    /// being decoded. 64 KiB holds an order of hundreds of lines; a buffer of
    /// `buffer_records_max` records can then never outgrow 640 MB.
    pub record_bytes_max: usize,
    /// Lines an OrderPlaced may have; more is dead-lettered (`validation`). A cart of more
    /// than 100 distinct SKUs is not a shopper.
    pub order_lines_max: usize,
    /// Bytes any string field of an input record may have (ids, currency, reasons, locations).
    pub string_bytes_max: usize,
    /// Largest quantity of an order line, a stock receipt or a stock count. Keeps stock sums
    /// far from overflow: 1,000,000 per event is beyond any real movement.
    pub quantity_max: i32,
    /// How far an input record's `occurred_at` may lie ahead of its Kafka record timestamp;
    /// further is dead-lettered (`validation`). One record stamped years ahead would otherwise
    /// advance stream time there and fire every timer of its task (every reservation expires,
    /// every orphan is dead-lettered). A day allows any clock or time-zone mistake a producer
    /// really makes. Records without a timestamp are not checked.
    pub future_skew_ms: i64,
    /// Bytes of a dead-lettered record's key and of its value the dead letter keeps; longer
    /// ones are cut, and header `key_bytes`/`value_bytes` gives the original length. A record
    /// near the broker's size limit, copied whole with its headers, would be refused on every
    /// retry and stop the partition for good. 64 KiB keeps every record `record_bytes_max`
    /// lets through whole.
    pub dead_letter_bytes_max: usize,
    /// Events one unknown order may have parked while they wait for its OrderPlaced; more are
    /// dead-lettered (`validation`). The parked events are one state value (and one changelog
    /// record): unbounded, one order id that never arrives grows it past what the broker takes.
    pub orphans_per_order_max: usize,
    /// Warehouses one SKU may hold stock in; an inventory record naming one more is
    /// dead-lettered (`validation`). The per-warehouse counts are part of the SKU's state value.
    pub warehouses_per_sku_max: usize,
    /// Records the producer holds before the broker has acknowledged them (librdkafka's
    /// `queue.buffering.max.messages`). A full queue waits at most
    /// `runtime.produce_queue_wait_ms` for room.
    pub producer_queue_records_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            buffer_records_max: 10_000,
            commit_records_max: 10_000,
            pending_commands_max: 200_000,
            dedup_purge_per_commit_max: 10_000,
            forget_timers_cached_max: 10_000,
            restore_batch_records_max: 20_000,
            record_bytes_max: 64 * 1024,
            order_lines_max: 100,
            string_bytes_max: 1024,
            quantity_max: 1_000_000,
            future_skew_ms: 24 * 60 * 60 * 1000,
            dead_letter_bytes_max: 64 * 1024,
            orphans_per_order_max: 100,
            warehouses_per_sku_max: 1_000,
            producer_queue_records_max: 1_000_000,
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
    /// Mirror every store to its compacted changelog topic, so a task can move to another
    /// instance and a lost disk can be rebuilt. Off only for a single instance whose disk is
    /// the only copy anyone needs (it saves about one broker record per input event).
    pub changelog: bool,
    /// What RocksDB may hold in memory for all of the process's tasks together: one block
    /// cache of this size, which the memtables of every task are charged to as well (they may
    /// take half of it before the largest is flushed). Without a shared budget each column
    /// family of each task would keep its own memtables and cache, and memory would grow with
    /// the number of tasks, not with the setting.
    pub memory_budget_bytes: usize,
    /// Set by `inspect`, never by the file: open task state for reading while it may be in use.
    #[serde(skip)]
    pub read_only: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("./orderfold-state"),
            sync_commits: false,
            changelog: true,
            memory_budget_bytes: 256 << 20,
            read_only: false,
        }
    }
}

/// How processing survives failures. `exactly_once` needs a broker with Kafka transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

/// Where the brokers are and who this instance is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// The consumer group id, and the prefix of orderfold's internal topics
    /// (`<application_id>.sku-commands`, `<application_id>.dlq`). Instances with the same id
    /// share the work; a different id is an independent copy with its own state.
    pub application_id: String,
    pub processing_guarantee: Guarantee,
    /// `exactly_once` only: the transactional id of this instance's producer. A restarted
    /// instance must reuse its id, so the broker fences the old one if it is still alive; two
    /// live instances must never share one. Empty: `<application_id>-<instance id>`, where the
    /// instance id is created once and kept in the state directory.
    pub transactional_id: String,
    /// librdkafka properties given to every client as they are (security.protocol, sasl.*,
    /// ssl.*, fetch and batching tuning). They win over orderfold's own client settings.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            application_id: "orderfold".into(),
            processing_guarantee: Guarantee::AtLeastOnce,
            transactional_id: String::new(),
            properties: BTreeMap::new(),
        }
    }
}

/// The names of the topics orderfold reads and writes. Internal topics are named after the
/// application id instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    pub orders: String,
    pub payments: String,
    pub logistics: String,
    pub inventory: String,
    pub reservation_expiry: String,
    pub tracking_status: String,
    pub oversell_alerts: String,
    /// Partitions `orderfold topics create` gives the order stage's inputs and outputs.
    pub order_partitions: u32,
    /// Partitions `orderfold topics create` gives inventory, the command topic and alerts.
    pub sku_partitions: u32,
    /// `min.compaction.lag.ms` of the changelog topics: how long a changelog record is safe
    /// from compaction. A crash can leave an unfinished batch at a changelog's tail, newer than
    /// the committed values it would replace; the task's next start overwrites it, so this
    /// must outlast any outage in which the task's local disk is lost too. 7 days.
    pub changelog_min_compaction_lag_ms: u64,
    /// Replicas `orderfold topics create` gives every topic, capped at the brokers the
    /// cluster has (a single-node broker such as tansu gets 1). Three survive one broker lost
    /// while a second is down for maintenance.
    pub replication_factor: u32,
    /// `min.insync.replicas` of every topic created with more than one replica, capped at the
    /// replication factor: with `acks=all`, a write is refused rather than kept by a single
    /// broker, so a broker lost right after it cannot lose an acknowledged output.
    pub min_insync_replicas: u32,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            orders: "orders".into(),
            payments: "payments".into(),
            logistics: "logistics".into(),
            inventory: "inventory".into(),
            reservation_expiry: "reservation-expiry".into(),
            tracking_status: "tracking-status".into(),
            oversell_alerts: "oversell-alerts".into(),
            order_partitions: 4,
            sku_partitions: 4,
            changelog_min_compaction_lag_ms: 7 * 24 * 60 * 60 * 1000,
            replication_factor: 3,
            min_insync_replicas: 2,
        }
    }
}

impl TopicsConfig {
    pub fn sku_commands(application_id: &str) -> String {
        format!("{application_id}.sku-commands")
    }

    pub fn dead_letters(application_id: &str) -> String {
        format!("{application_id}.dlq")
    }
}

/// The consumer-group runtime's pacing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Longest time between commits. A commit flushes outputs, so this bounds both the work a
    /// crash repeats and how late the SKU stage hears the order stage's watermark.
    pub commit_interval_ms: u64,
    /// Records taken from the consumer per poll round before the tasks run.
    pub poll_records_max: usize,
    /// How long a poll waits when no task has work.
    pub poll_timeout_ms: u64,
    /// How long a commit may wait for the broker to acknowledge its outputs.
    pub produce_ack_timeout_ms: u64,
    /// How long handing a record to a full producer queue may wait for room. Past it the
    /// batch is dropped and retried after a backoff, as a refused record is: during an outage
    /// the queue frees only as records time out (`message.timeout.ms`, minutes), and the loop
    /// must go on polling the group and honouring a shutdown meanwhile.
    pub produce_queue_wait_ms: u64,
    /// After a failed commit (a refused or unacknowledged record), how long to wait before
    /// processing its batch again from the last commit. Doubles with each failure in a row.
    pub retry_backoff_ms: u64,
    /// The longest wait between retries of a failing commit.
    pub retry_backoff_max_ms: u64,
    /// How long SIGTERM/SIGINT may take to commit the current batch and leave the group.
    pub shutdown_timeout_ms: u64,
    /// Move an idle, caught-up order task's stream time to the wall clock, so reservations
    /// expire when nothing is happening. Off makes results depend on the input alone.
    pub wall_clock_advance: bool,
    /// Live mode: how often an order task whose stream time moved publishes its watermark
    /// between commits. The SKU stage decides a reservation only once every order task's
    /// watermark has passed it, so this, not `commit_interval_ms`, bounds how long an alert
    /// waits. Each publication is one record per SKU partition. 0 publishes at commits only.
    pub watermark_interval_ms: u64,
    /// Bounded runs: how far in event time an order task may run ahead of the slowest order
    /// task of this instance that still has input to read. Commands wait in the SKU stage's memory until
    /// the slowest order partition's watermark passes them, so this bounds that wait (and the
    /// memory) when the consumer fetches one partition's backlog before the others'.
    pub watermark_alignment_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            commit_interval_ms: 1_000,
            poll_records_max: 5_000,
            poll_timeout_ms: 100,
            produce_ack_timeout_ms: 30_000,
            produce_queue_wait_ms: 1_000,
            retry_backoff_ms: 500,
            retry_backoff_max_ms: 30_000,
            shutdown_timeout_ms: 30_000,
            wall_clock_advance: true,
            watermark_interval_ms: 10,
            watermark_alignment_ms: 30_000,
        }
    }
}

/// The HTTP server beside the service: metrics, health, readiness and state queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where `orderfold run` listens. Loopback by default: the state endpoints show business
    /// data, so exposing them is a decision (bind 0.0.0.0:9464 behind a firewall or proxy).
    /// Empty: no server.
    pub bind: String,
    /// Answer `/state/sku/{sku}` and `/state/order/{order_id}`. Off: they answer 404.
    pub state_queries: bool,
    /// Most reservations one `/state/sku/{sku}` answer holds (and how many it holds unless
    /// `?limit=` asks for fewer); `?after=` with the answer's `next_after` reads the next page.
    /// A hot SKU can hold hundreds of thousands: unpaged, one request would build them all.
    pub state_page_records_max: usize,
    /// `/healthz` fails once the poll loop has not gone round for this long. Above
    /// `runtime.produce_ack_timeout_ms`, because a commit may wait that long for the broker.
    pub stall_after_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: "127.0.0.1:9464".into(),
            state_queries: true,
            state_page_records_max: 1_000,
            stall_after_ms: 60_000,
        }
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Off: `/metrics` still answers, but no occurrence moves a metric (logs stay the same).
    pub enabled: bool,
    /// How often librdkafka reports the high watermarks the consumer-lag gauge is computed
    /// from (its `statistics.interval.ms`). 5 s is below any sane scrape interval's double.
    pub lag_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            lag_interval_ms: 5_000,
        }
    }
}

/// How records are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireFormat {
    /// Avro single-object encoding: `C3 01`, the writer schema's 8-byte fingerprint, the datum.
    #[default]
    SingleObject,
    /// Confluent's framing: a zero byte, the writer schema's 4-byte registry id (big-endian),
    /// the datum.
    Confluent,
}

/// Avro schemas beyond orderfold's own: where Confluent-framed records' schema ids resolve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AvroConfig {
    /// How orderfold frames what it writes to its output topics (reservation expiries,
    /// tracking status, oversell alerts). Input is read in either framing, detected per record.
    /// Internal topics always use single-object encoding.
    pub output_format: WireFormat,
    /// A Confluent-compatible schema registry (`http://host:8081`). Ids not in `schema_ids` are
    /// fetched from it once and cached; `confluent` output registers the output schemas under
    /// `<topic>-value` (as Confluent's serializers do) to learn their ids. Empty: none.
    pub schema_registry_url: String,
    /// How long one registry request may take, retries included, before the process stops
    /// (exits non-zero; a restart reads the record again). A registry that answers "not found"
    /// sends the record to the dead-letter topic instead.
    pub registry_timeout_ms: u64,
    /// Static schema ids: registry id → `.avsc` file, for deployments without a registry or to
    /// pin ids. Ids here win over the registry.
    pub schema_ids: BTreeMap<String, PathBuf>,
    /// Other versions of orderfold's input schemas that producers write single-object encoded
    /// records with (`.avsc` files). Each is read through Avro schema resolution against
    /// orderfold's own: added fields with defaults are skipped, removed fields with defaults
    /// are filled in. A schema resolution cannot read is refused at startup.
    pub writer_schemas: Vec<PathBuf>,
}

impl Default for AvroConfig {
    fn default() -> Self {
        AvroConfig {
            output_format: WireFormat::SingleObject,
            schema_registry_url: String::new(),
            registry_timeout_ms: 10_000,
            schema_ids: BTreeMap::new(),
            writer_schemas: Vec::new(),
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
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub runtime: RuntimeConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub avro: AvroConfig,
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

/// Prefix of the environment variables that override the file: `ORDERFOLD_<SECTION>_<KEY>`
/// (`ORDERFOLD_KAFKA_BOOTSTRAP_SERVERS`), and `ORDERFOLD_LIBRDKAFKA_<PROPERTY>` with dots as
/// underscores (`ORDERFOLD_LIBRDKAFKA_SASL_MECHANISM` sets `sasl.mechanism`).
pub const ENV_PREFIX: &str = "ORDERFOLD_";
const SECTIONS: [&str; 9] = [
    "rules", "limits", "state", "kafka", "topics", "runtime", "http", "metrics", "avro",
];

impl Config {
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::from_toml_with_env(text, path, std::iter::empty())
    }

    /// Parses `text`, then applies the `ORDERFOLD_*` variables of `env` over it. A variable
    /// naming a section but no key of it is an error, like an unknown key in the file.
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        };
        let mut doc: toml::Table = toml::from_str(text).map_err(parse_error)?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            if let Some(property) = rest.strip_prefix("librdkafka_") {
                let table = section(&mut doc, "kafka")?;
                let properties = table
                    .entry("properties")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(p) = properties {
                    p.insert(property.replace('_', "."), toml::Value::String(value));
                }
                continue;
            }
            let Some((sect, key)) = SECTIONS
                .iter()
                .find_map(|s| rest.strip_prefix(&format!("{s}_")).map(|k| (*s, k)))
            else {
                continue;
            };
            // A value that reads as a TOML number or boolean is one; anything else is a string.
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(|v| !v.is_table() && !v.is_array())
                .unwrap_or(toml::Value::String(value));
            section(&mut doc, sect)?.insert(key.to_string(), parsed);
        }
        let config: Config = doc.try_into().map_err(parse_error)?;
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

    /// The file at `path` (or the defaults), with the process environment's overrides.
    pub fn load_with_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (text, shown) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
                p.to_path_buf(),
            ),
            None => (String::new(), PathBuf::from("(defaults)")),
        };
        Self::from_toml_with_env(&text, &shown, std::env::vars())
    }

    pub fn sku_commands_topic(&self) -> String {
        TopicsConfig::sku_commands(&self.kafka.application_id)
    }

    pub fn dead_letter_topic(&self) -> String {
        TopicsConfig::dead_letters(&self.kafka.application_id)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.rules;
        if r.reservation_ttl_ms < 0
            || r.orphan_ttl_ms < 0
            || r.dedup_retention_ms < 0
            || r.final_retention_ms < 0
        {
            return Err(ConfigError::Invalid(
                "rule durations must not be negative".into(),
            ));
        }
        let l = &self.limits;
        if l.buffer_records_max == 0
            || l.commit_records_max == 0
            || l.pending_commands_max == 0
            || l.restore_batch_records_max == 0
            || l.record_bytes_max == 0
            || l.order_lines_max == 0
            || l.string_bytes_max == 0
            || l.quantity_max <= 0
            || l.future_skew_ms <= 0
            || l.dead_letter_bytes_max == 0
            || l.orphans_per_order_max == 0
            || l.warehouses_per_sku_max == 0
            || l.forget_timers_cached_max == 0
            || self.topics.replication_factor == 0
            || self.topics.min_insync_replicas == 0
            || self.state.memory_budget_bytes == 0
        {
            return Err(ConfigError::Invalid("limits must be at least 1".into()));
        }
        if self.runtime.retry_backoff_ms == 0
            || self.runtime.retry_backoff_max_ms < self.runtime.retry_backoff_ms
        {
            return Err(ConfigError::Invalid(
                "runtime.retry_backoff_ms must be at least 1 and at most retry_backoff_max_ms"
                    .into(),
            ));
        }
        if self.runtime.poll_records_max == 0 {
            return Err(ConfigError::Invalid(
                "runtime.poll_records_max must be at least 1".into(),
            ));
        }
        if self.topics.order_partitions == 0 || self.topics.sku_partitions == 0 {
            return Err(ConfigError::Invalid(
                "topics need at least one partition".into(),
            ));
        }
        if self.kafka.application_id.is_empty() {
            return Err(ConfigError::Invalid(
                "kafka.application_id must not be empty".into(),
            ));
        }
        if let Some(bad) = self
            .avro
            .schema_ids
            .keys()
            .find(|k| k.parse::<u32>().is_err())
        {
            return Err(ConfigError::Invalid(format!(
                "avro.schema_ids: {bad:?} is not a schema id (a number)"
            )));
        }
        Ok(())
    }
}

fn section<'a>(doc: &'a mut toml::Table, name: &str) -> Result<&'a mut toml::Table, ConfigError> {
    match doc
        .entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
    {
        toml::Value::Table(t) => Ok(t),
        _ => Err(ConfigError::Invalid(format!("[{name}] must be a table"))),
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
    fn environment_variables_override_the_file() {
        let env = [
            ("ORDERFOLD_KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092"),
            ("ORDERFOLD_LIMITS_COMMIT_RECORDS_MAX", "77"),
            ("ORDERFOLD_RUNTIME_WALL_CLOCK_ADVANCE", "false"),
            ("ORDERFOLD_LIBRDKAFKA_SASL_MECHANISM", "PLAIN"),
            ("ORDERFOLD_LOG", "json"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let text = "[limits]\ncommit_records_max = 5\n[kafka]\napplication_id = \"shop\"\n";
        let c = Config::from_toml_with_env(text, Path::new("x"), env).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "10.0.0.1:9092");
        assert_eq!(c.kafka.application_id, "shop");
        assert_eq!(c.limits.commit_records_max, 77);
        assert!(!c.runtime.wall_clock_advance);
        assert_eq!(c.kafka.properties["sasl.mechanism"], "PLAIN");
        assert_eq!(c.sku_commands_topic(), "shop.sku-commands");
    }

    #[test]
    fn a_misspelt_environment_key_is_refused() {
        let env = [(
            "ORDERFOLD_LIMITS_COMMIT_RECORDS".to_string(),
            "1".to_string(),
        )];
        assert!(Config::from_toml_with_env("", Path::new("x"), env).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::from_toml("[rules]\nreservation_ttl = 5", Path::new("x")).is_err());
    }
}
