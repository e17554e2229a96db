//! Replay and reset. A replay is a bounded run of the log from a chosen start (earliest, a
//! record timestamp, or an offsets file) to the end offsets captured when it starts, into fresh
//! state under its own application id, optionally writing prefixed output topics so a backfill
//! never lands in production topics. A reset returns an application id to a start: group
//! offsets rewound, this machine's state deleted, and a reset checkpoint per task so that every
//! instance's state, restored or local, begins empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::changelog::{Checkpoint, CHECKPOINT_KEY};
use crate::config::Config;
use crate::kafka::{self, Acks, ClientError, EndOffsets, TopicNames};
use crate::state::{Stage, StateOptions, Store, TaskDb};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(
        "a replay needs its own application id (its internal topics and state are named after \
         it); {0} is the production one. Pass --application-id, or leave it out for a fresh one"
    )]
    SameApplication(String),
    #[error("the replay's state directory {0} is not empty: a replay starts from fresh state")]
    StateNotFresh(PathBuf),
    #[error("offsets file {path}: {detail}")]
    OffsetsFile { path: PathBuf, detail: String },
    #[error("{0}: no such start; use earliest, a record timestamp in epoch milliseconds, or --from-offsets FILE")]
    BadStart(String),
    #[error(
        "the consumer group {group} has {members} live member(s) ({state}): stop every instance \
         of the application before resetting it"
    )]
    GroupActive {
        group: String,
        members: usize,
        state: String,
    },
    #[error("cannot delete {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a replay (or a reset) starts reading the external inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Earliest,
    /// The first record whose Kafka timestamp is at or after this many epoch milliseconds.
    Timestamp(i64),
    /// Offsets per (topic, partition); partitions not named start at the beginning.
    Offsets(EndOffsets),
}

impl Start {
    /// `earliest` or epoch milliseconds.
    pub fn parse(text: &str) -> Result<Start, ReplayError> {
        match text {
            "earliest" => Ok(Start::Earliest),
            t => t
                .parse::<i64>()
                .map(Start::Timestamp)
                .map_err(|_| ReplayError::BadStart(t.to_string())),
        }
    }

    /// An offsets file: JSON `{"topic": {"partition": offset, ...}, ...}`.
    pub fn from_file(path: &Path) -> Result<Start, ReplayError> {
        let bad = |detail: String| ReplayError::OffsetsFile {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let parsed: BTreeMap<String, BTreeMap<String, i64>> =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut offsets = EndOffsets::new();
        for (topic, partitions) in parsed {
            for (p, offset) in partitions {
                let p: i32 = p
                    .parse()
                    .map_err(|_| bad(format!("{topic}: partition {p} is not a number")))?;
                if offset < 0 {
                    return Err(bad(format!("{topic} {p}: negative offset {offset}")));
                }
                offsets.insert((topic.clone(), p), offset);
            }
        }
        Ok(Start::Offsets(offsets))
    }
}

/// The configuration a replay runs with: `base` under its own application id (given, or
/// `<base id>-replay-<unix seconds>`), output topics prefixed if asked, state under `state_dir`
/// (or the base's), no wall-clock advance. Refuses the production id and non-empty state.
pub fn replay_config(
    base: &Config,
    application_id: Option<&str>,
    output_prefix: Option<&str>,
    state_dir: Option<&Path>,
) -> Result<Config, ReplayError> {
    let mut config = base.clone();
    let id = match application_id {
        Some(id) => id.to_string(),
        None => {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("{}-replay-{secs}", base.kafka.application_id)
        }
    };
    if id == base.kafka.application_id {
        return Err(ReplayError::SameApplication(id));
    }
    config.kafka.application_id = id;
    if let Some(prefix) = output_prefix {
        let t = &mut config.topics;
        for name in [
            &mut t.reservation_expiry,
            &mut t.tracking_status,
            &mut t.oversell_alerts,
        ] {
            *name = format!("{prefix}{name}");
        }
    }
    if let Some(dir) = state_dir {
        config.state.dir = dir.to_path_buf();
    }
    config.runtime.wall_clock_advance = false;
    let root = config.state.dir.join(&config.kafka.application_id);
    let empty = std::fs::read_dir(&root).map_or(true, |mut d| d.next().is_none());
    if !empty {
        return Err(ReplayError::StateNotFresh(root));
    }
    Ok(config)
}

/// A partition's (low, high) watermarks.
type Watermarks = (i64, i64);

/// Every partition of the external inputs with its watermarks.
fn input_partitions(
    config: &Config,
    consumer: &BaseConsumer,
) -> Result<BTreeMap<(String, i32), Watermarks>, ReplayError> {
    let names = TopicNames::from_config(config);
    let counts = kafka::partition_counts(config, &names.external_inputs())?;
    let mut out = BTreeMap::new();
    for (topic, n) in counts {
        for p in 0..n as i32 {
            let marks = consumer.fetch_watermarks(&topic, p, kafka::REQUEST_TIMEOUT)?;
            out.insert((topic.clone(), p), marks);
        }
    }
    Ok(out)
}

/// Every external input partition's end offset now: where a replay started now ends.
pub fn end_offsets(config: &Config) -> Result<EndOffsets, ReplayError> {
    let consumer: BaseConsumer = kafka::client_config(config).create()?;
    Ok(input_partitions(config, &consumer)?
        .into_iter()
        .map(|(k, (_, high))| (k, high))
        .collect())
}

/// The offset each external input partition starts at for `start`: its log start for
/// `earliest`, the first record at or after a timestamp (its end if there is none), or the
/// file's offsets.
pub fn start_offsets(config: &Config, start: &Start) -> Result<EndOffsets, ReplayError> {
    let consumer: BaseConsumer = kafka::client_config(config).create()?;
    let partitions = input_partitions(config, &consumer)?;
    match start {
        Start::Earliest => Ok(partitions
            .into_iter()
            .map(|(k, (low, _))| (k, low))
            .collect()),
        Start::Offsets(given) => Ok(partitions
            .into_iter()
            .map(|(k, (low, _))| {
                let at = given.get(&k).copied().unwrap_or(low);
                (k, at)
            })
            .collect()),
        Start::Timestamp(ts) => {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in partitions.keys() {
                tpl.add_partition_offset(t, *p, Offset::Offset(*ts))?;
            }
            let found = consumer.offsets_for_times(tpl, kafka::REQUEST_TIMEOUT)?;
            let mut out = EndOffsets::new();
            for e in found.elements() {
                let key = (e.topic().to_string(), e.partition());
                let (_, high) = partitions.get(&key).copied().unwrap_or((0, 0));
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => high,
                };
                out.insert(key, at);
            }
            Ok(out)
        }
    }
}

/// What `reset` does to an application id. Nothing is deleted on the broker (tansu 0.6.0's
/// DeleteTopics removes every topic, not the ones named): the internal topics stay, and a
/// reset checkpoint in each task's checkpoint changelog says that its state begins empty at the
/// changelogs' current ends.
#[derive(Debug, Clone)]
pub struct ResetPlan {
    pub group: String,
    /// The group offsets it commits: the external inputs at the start, the SKU command topic
    /// at its end (commands of the earlier life are never read again).
    pub offsets: EndOffsets,
    /// Per stage and partition, the reset checkpoint it writes.
    pub checkpoints: Vec<(Stage, i32, Checkpoint)>,
    /// The local state directory it deletes, if it exists.
    pub state_dir: Option<PathBuf>,
}

impl std::fmt::Display for ResetPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "reset of application {}:", self.group)?;
        for ((t, p), o) in &self.offsets {
            writeln!(f, "  commit group offset {t} [{p}] = {o}")?;
        }
        for (stage, p, c) in &self.checkpoints {
            let base: Vec<String> = c.base.iter().map(|(s, o)| format!("{s} {o}")).collect();
            writeln!(
                f,
                "  reset checkpoint for {} task {p}: state begins empty at {}",
                stage.name(),
                base.join(", ")
            )?;
        }
        match &self.state_dir {
            Some(d) => writeln!(f, "  delete local state {}", d.display()),
            None => writeln!(f, "  no local state on this machine"),
        }
    }
}

/// Refuses while the application is alive: the group's members as the broker lists them, and
/// this machine's task directories (a running instance holds their RocksDB locks). A broker
/// that cannot list group members (tansu 0.6.0 has no DescribeGroups) leaves the local check.
fn check_group_empty(config: &Config, consumer: &BaseConsumer) -> Result<(), ReplayError> {
    let group = &config.kafka.application_id;
    match consumer.fetch_group_list(Some(group), kafka::REQUEST_TIMEOUT) {
        Ok(list) => {
            for g in list.groups().iter().filter(|g| g.name() == group) {
                if !g.members().is_empty() {
                    return Err(ReplayError::GroupActive {
                        group: group.clone(),
                        members: g.members().len(),
                        state: g.state().to_string(),
                    });
                }
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            "the broker cannot list the group's members; checking this machine's instances only"
        ),
    }
    let root = config.state.dir.join(group);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stage = if name.starts_with("order-") {
            Stage::Order
        } else if name.starts_with("sku-") {
            Stage::Sku
        } else {
            continue;
        };
        if let Err(e) = TaskDb::open(&entry.path(), stage.stores(), &StateOptions::default()) {
            if e.to_string().to_ascii_lowercase().contains("lock") {
                return Err(ReplayError::GroupActive {
                    group: group.clone(),
                    members: 1,
                    state: format!(
                        "an instance on this machine holds {}",
                        entry.path().display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// What a reset of `config`'s application id to `start` would do. Refuses while the
/// application is alive.
pub fn plan_reset(config: &Config, start: &Start) -> Result<ResetPlan, ReplayError> {
    let consumer: BaseConsumer = kafka::client_config(config).create()?;
    check_group_empty(config, &consumer)?;
    let layout = kafka::check_layout(config)?;
    let names = TopicNames::from_config(config);
    let mut offsets = start_offsets(config, start)?;
    for p in 0..layout.sku_partitions as i32 {
        let (_, high) =
            consumer.fetch_watermarks(&names.sku_commands, p, kafka::REQUEST_TIMEOUT)?;
        offsets.insert((names.sku_commands.clone(), p), high);
    }
    let mut checkpoints = Vec::new();
    let stages = if config.state.changelog {
        vec![
            (Stage::Order, layout.order_partitions),
            (Stage::Sku, layout.sku_partitions),
        ]
    } else {
        Vec::new()
    };
    for (stage, n) in stages {
        for p in 0..n as i32 {
            let mut ends = BTreeMap::new();
            for (store, topic) in names.changelogs(stage) {
                if *store == Store::Meta {
                    continue;
                }
                let (_, high) = consumer.fetch_watermarks(topic, p, kafka::REQUEST_TIMEOUT)?;
                ends.insert(stage.store_name(*store), high);
            }
            checkpoints.push((
                stage,
                p,
                Checkpoint {
                    base: ends.clone(),
                    ends,
                    meta: Vec::new(),
                },
            ));
        }
    }
    let root = config.state.dir.join(&config.kafka.application_id);
    Ok(ResetPlan {
        group: config.kafka.application_id.clone(),
        offsets,
        checkpoints,
        state_dir: root.exists().then_some(root),
    })
}

/// Carries out a reset plan: reset checkpoints, group offsets, local state. Checks again that
/// the application is not running first.
pub fn apply_reset(config: &Config, plan: &ResetPlan) -> Result<(), ReplayError> {
    let consumer: BaseConsumer = kafka::client_config(config)
        .set("group.id", &config.kafka.application_id)
        .set("enable.auto.commit", "false")
        .create()?;
    check_group_empty(config, &consumer)?;
    let names = TopicNames::from_config(config);
    let producer: BaseProducer<Acks> =
        kafka::producer_config(config).create_with_context(Acks::default())?;
    for (stage, p, checkpoint) in &plan.checkpoints {
        let value = postcard::to_stdvec(checkpoint)
            .map_err(|e| ClientError::Io(format!("reset checkpoint: {e}")))?;
        let mut record: BaseRecord<[u8], [u8], usize> =
            BaseRecord::with_opaque_to(names.changelog(*stage, Store::Meta), 0);
        record.key = Some(CHECKPOINT_KEY);
        record.payload = Some(&value);
        record.partition = Some(*p);
        producer.send(record).map_err(|(e, _)| e)?;
    }
    producer.flush(kafka::REQUEST_TIMEOUT)?;
    producer.context().take_failures()?;
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &plan.offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))?;
    }
    if tpl.count() > 0 {
        consumer.commit(&tpl, CommitMode::Sync)?;
    }
    if let Some(dir) = &plan.state_dir {
        std::fs::remove_dir_all(dir).map_err(|source| ReplayError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}
