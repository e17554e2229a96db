//! orderfold's Kafka clients: the settings every consumer, producer and admin client gets, the
//! topic layout (names, partition counts, the startup check), and small whole-topic helpers
//! used by `topics create`, `generate`, the demo, the benchmark and the tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::changelog;
use crate::config::Config;
use crate::metrics::{self, At, Metrics, Occurrence, Sent};
use crate::state::{Stage, Store};

/// How long metadata and admin requests may take before a command gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} does not exist (create it with `orderfold topics create`)")]
    Missing(String),
    #[error(
        "co-partitioned topics disagree: the {stage} stage's inputs and changelogs must have \
         equal partition counts, but {counts}. Repartition them so partition p of each holds \
         the same keys (a changelog's partition is its task's)."
    )]
    Mismatch { stage: &'static str, counts: String },
    #[error("cannot create topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("{0}")]
    Io(String),
    #[error("the broker did not acknowledge {failed} records: {first}")]
    Unacknowledged { failed: u64, first: String },
    #[error(
        "kafka: authentication failed at {brokers}: {reason} (check sasl.mechanism, \
         sasl.username and sasl.password)"
    )]
    Authentication { brokers: String, reason: String },
    #[error("kafka: no broker at {brokers} answered within {waited_s} s: {error}")]
    Unreachable {
        brokers: String,
        waited_s: u64,
        error: KafkaError,
    },
}

/// A client context that remembers the authentication failure librdkafka reports, which
/// otherwise surfaces only as a "broker transport failure" after the request timeout.
#[derive(Default)]
struct Probe {
    authentication: Mutex<Option<String>>,
}

impl ClientContext for Probe {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            if let Ok(mut a) = self.authentication.lock() {
                a.get_or_insert_with(|| reason.to_string());
            }
        }
        tracing::debug!(error = %error, reason, "librdkafka error while connecting");
    }
}

impl ProducerContext for Probe {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// Reaches the brokers before a command does anything else, so a wrong address or a
/// rejected login is named at once. librdkafka reports a failed SASL handshake as an event on
/// the client's main queue, which only a producer's `poll` serves; the metadata request alone
/// would end in a transport failure after the request timeout. librdkafka's reason names the
/// mechanism and the broker's answer, never the password.
pub fn connect(config: &Config) -> Result<(), ClientError> {
    let producer: BaseProducer<Probe> =
        client_config(config).create_with_context(Probe::default())?;
    let started = Instant::now();
    let brokers = config.kafka.bootstrap_servers.clone();
    loop {
        producer.poll(Duration::from_millis(20));
        let failed = producer
            .context()
            .authentication
            .lock()
            .ok()
            .and_then(|a| a.clone());
        if let Some(reason) = failed {
            return Err(ClientError::Authentication { brokers, reason });
        }
        match producer
            .client()
            .fetch_metadata(None, Duration::from_millis(500))
        {
            Ok(_) => return Ok(()),
            Err(error) if started.elapsed() >= REQUEST_TIMEOUT => {
                return Err(ClientError::Unreachable {
                    brokers,
                    waited_s: started.elapsed().as_secs(),
                    error,
                })
            }
            Err(_) => {}
        }
    }
}

/// Counts the deliveries a producer's broker refused, so a writer can wait for its records and
/// then know whether all of them landed.
#[derive(Default)]
pub struct Acks {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// With `tracking_ends`, the end offset each delivered record proves, per partition.
    ends: Option<Mutex<EndOffsets>>,
    /// With `observed`, every acknowledgement and refusal is an occurrence: the record's kind
    /// and cause time travel as its delivery opaque (see `metrics::delivery_opaque`).
    metrics: Option<Arc<Metrics>>,
}

impl Acks {
    /// Also remembers the offset after each acknowledged record, per partition: what a writer
    /// knows to be the end of what it wrote, whatever the broker reports.
    pub fn tracking_ends() -> Acks {
        Acks {
            ends: Some(Mutex::new(EndOffsets::new())),
            ..Acks::default()
        }
    }

    /// `tracking_ends`, with each delivery emitted as an occurrence.
    pub fn observed(metrics: Arc<Metrics>) -> Acks {
        Acks {
            metrics: Some(metrics),
            ..Acks::tracking_ends()
        }
    }

    pub fn ends(&self) -> EndOffsets {
        self.ends
            .as_ref()
            .and_then(|e| e.lock().ok().map(|e| e.clone()))
            .unwrap_or_default()
    }

    /// Takes the failures since the last call.
    pub fn take_failures(&self) -> Result<(), ClientError> {
        let failed = self.failed.swap(0, Ordering::AcqRel);
        if failed == 0 {
            return Ok(());
        }
        let first = self
            .first_error
            .lock()
            .map(|mut e| e.take())
            .unwrap_or_default()
            .unwrap_or_default();
        Err(ClientError::Unacknowledged { failed, first })
    }
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if let Some(metrics) = &self.metrics {
            observe_delivery(metrics, result, opaque);
        }
        if let (Ok(m), Some(ends)) = (result, &self.ends) {
            if let Ok(mut ends) = ends.lock() {
                let end = ends
                    .entry((m.topic().to_string(), m.partition()))
                    .or_default();
                *end = (*end).max(m.offset() + 1);
            }
        }
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::AcqRel);
            if let Ok(mut first) = self.first_error.lock() {
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Emits the occurrence of one acknowledgement or refusal.
fn observe_delivery(metrics: &Metrics, result: &DeliveryResult<'_>, opaque: usize) {
    let (sent, cause_time) = metrics::from_opaque(opaque);
    match result {
        Ok(m) => {
            let at = At {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
            };
            if sent == Sent::DeadLetter {
                let header = |name: &str| -> String {
                    m.headers()
                        .and_then(|h| h.iter().find(|h| h.key == name))
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let (reason, detail, topic) = (header("reason"), header("detail"), header("topic"));
                metrics.emit(Occurrence::DeadLettered {
                    at,
                    reason: &reason,
                    detail: &detail,
                    source: At {
                        topic: &topic,
                        partition: header("partition").parse().unwrap_or(-1),
                        offset: header("offset").parse().unwrap_or(-1),
                    },
                });
            } else {
                metrics.emit(Occurrence::Delivered {
                    at,
                    sent,
                    key: m.key(),
                    cause_time,
                });
            }
        }
        Err((e, m)) => metrics.emit(Occurrence::DeliveryFailed {
            topic: m.topic(),
            partition: m.partition(),
            error: &e.to_string(),
        }),
    }
}

/// Which stage an input topic feeds, and at which input index of that stage's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputSlot {
    Order(usize),
    Sku(usize),
}

/// Every topic name orderfold uses, resolved from the config once.
#[derive(Debug, Clone)]
pub struct TopicNames {
    pub orders: String,
    pub payments: String,
    pub logistics: String,
    pub inventory: String,
    pub sku_commands: String,
    pub reservation_expiry: String,
    pub tracking_status: String,
    pub oversell_alerts: String,
    pub dead_letters: String,
    /// Each stage's changelog topics by store; empty when `state.changelog` is off.
    pub order_changelogs: Vec<(Store, String)>,
    pub sku_changelogs: Vec<(Store, String)>,
}

impl TopicNames {
    pub fn from_config(config: &Config) -> TopicNames {
        let t = &config.topics;
        TopicNames {
            orders: t.orders.clone(),
            payments: t.payments.clone(),
            logistics: t.logistics.clone(),
            inventory: t.inventory.clone(),
            sku_commands: config.sku_commands_topic(),
            reservation_expiry: t.reservation_expiry.clone(),
            tracking_status: t.tracking_status.clone(),
            oversell_alerts: t.oversell_alerts.clone(),
            dead_letters: config.dead_letter_topic(),
            order_changelogs: changelogs(config, Stage::Order),
            sku_changelogs: changelogs(config, Stage::Sku),
        }
    }

    pub fn changelogs(&self, stage: Stage) -> &[(Store, String)] {
        match stage {
            Stage::Order => &self.order_changelogs,
            Stage::Sku => &self.sku_changelogs,
        }
    }

    /// The changelog topic of `store` in `stage` (empty if changelogs are off).
    pub fn changelog(&self, stage: Stage, store: Store) -> &str {
        self.changelogs(stage)
            .iter()
            .find(|(s, _)| *s == store)
            .map_or("", |(_, t)| t.as_str())
    }

    /// The order stage's inputs by rank (orders 0, payments 1, logistics 2).
    pub fn order_inputs(&self) -> [&str; 3] {
        [&self.orders, &self.payments, &self.logistics]
    }

    /// The inputs upstream services write (everything but the command topic).
    pub fn external_inputs(&self) -> [&str; 4] {
        [
            &self.orders,
            &self.payments,
            &self.logistics,
            &self.inventory,
        ]
    }

    /// The SKU stage's inputs by index (inventory 0, commands 1).
    pub fn sku_inputs(&self) -> [&str; 2] {
        [&self.inventory, &self.sku_commands]
    }

    /// The topic the generator writes a record of the driver's topic `name` to.
    pub fn external(&self, name: &str) -> Option<&str> {
        use crate::driver::topics;
        Some(match name {
            topics::ORDERS => &self.orders,
            topics::PAYMENTS => &self.payments,
            topics::LOGISTICS => &self.logistics,
            topics::INVENTORY => &self.inventory,
            topics::RESERVATION_EXPIRY => &self.reservation_expiry,
            topics::TRACKING_STATUS => &self.tracking_status,
            topics::OVERSELL_ALERTS => &self.oversell_alerts,
            topics::SKU_COMMANDS => &self.sku_commands,
            topics::DLQ => &self.dead_letters,
            _ => return None,
        })
    }

    pub fn slot(&self, topic: &str) -> Option<InputSlot> {
        if let Some(rank) = self.order_inputs().iter().position(|t| *t == topic) {
            return Some(InputSlot::Order(rank));
        }
        self.sku_inputs()
            .iter()
            .position(|t| *t == topic)
            .map(InputSlot::Sku)
    }

    pub fn inputs(&self) -> Vec<&str> {
        let mut all = self.order_inputs().to_vec();
        all.extend(self.sku_inputs());
        all
    }

    pub fn outputs(&self) -> [&str; 4] {
        [
            &self.reservation_expiry,
            &self.tracking_status,
            &self.oversell_alerts,
            &self.dead_letters,
        ]
    }
}

fn changelogs(config: &Config, stage: Stage) -> Vec<(Store, String)> {
    if config.state.changelog {
        changelog::topics(config, stage)
    } else {
        Vec::new()
    }
}

/// Partition counts of both stages, as found on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub order_partitions: u32,
    pub sku_partitions: u32,
}

/// The settings every client gets, then the operator's librdkafka properties over them.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    c.set("client.id", &config.kafka.application_id);
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// A producer for orderfold's outputs: idempotent, so a retried batch never reorders or
/// duplicates within a partition (the SKU stage relies on commands preceding their watermark),
/// and partitioned by murmur2 like Java clients, so commands land with their SKU's inventory.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    c.set("client.id", &config.kafka.application_id);
    c.set("partitioner", "murmur2_random");
    c.set("enable.idempotence", "true");
    c.set("linger.ms", "5");
    c.set("batch.num.messages", "10000");
    c.set(
        "queue.buffering.max.messages",
        config.limits.producer_queue_records_max.to_string(),
    );
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

fn admin(config: &Config) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    client_config(config).create()
}

/// Partition counts of `topics`; a topic the broker does not know is absent from the map.
pub fn partition_counts(
    config: &Config,
    topics: &[&str],
) -> Result<BTreeMap<String, u32>, KafkaError> {
    let consumer: BaseConsumer = client_config(config).create()?;
    let mut counts = BTreeMap::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), REQUEST_TIMEOUT)?;
        for mt in md.topics() {
            if mt.error().is_none() && !mt.partitions().is_empty() {
                counts.insert(mt.name().to_string(), mt.partitions().len() as u32);
            }
        }
    }
    Ok(counts)
}

/// The startup check: every topic of `topic_specs` exists, and each stage's co-partitioned
/// topics (its inputs and changelogs) have equal partition counts: partition p of each must
/// hold the same keys, or a task would see half an order, and a task's changelog partition is
/// its own.
pub fn check_layout(config: &Config) -> Result<Layout, ClientError> {
    let specs = topic_specs(config);
    let all: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let counts = partition_counts(config, &all)?;
    if let Some(missing) = all.iter().find(|t| !counts.contains_key(**t)) {
        return Err(ClientError::Missing(missing.to_string()));
    }
    let stage = |stage: Stage| -> Result<u32, ClientError> {
        let topics: Vec<(&str, u32)> = specs
            .iter()
            .filter(|s| s.copartitioned == Some(stage))
            .map(|s| (s.name.as_str(), counts[&s.name]))
            .collect();
        let first = topics.first().map_or(0, |(_, n)| *n);
        if topics.iter().all(|(_, n)| *n == first) {
            Ok(first)
        } else {
            Err(ClientError::Mismatch {
                stage: match stage {
                    Stage::Order => "order",
                    Stage::Sku => "SKU",
                },
                counts: topics
                    .iter()
                    .map(|(t, c)| format!("{t} has {c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    Ok(Layout {
        order_partitions: stage(Stage::Order)?,
        sku_partitions: stage(Stage::Sku)?,
    })
}

/// A topic as `topics create` makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    /// A changelog: `cleanup.policy=compact` with the configured `min.compaction.lag.ms`.
    pub compacted: bool,
    /// The stage whose tasks read this topic's partition p together with the stage's other
    /// co-partitioned topics (its inputs and changelogs); `check_layout` holds them equal.
    pub copartitioned: Option<Stage>,
}

impl TopicSpec {
    pub fn new(name: &str, partitions: u32) -> TopicSpec {
        TopicSpec {
            name: name.to_string(),
            partitions,
            compacted: false,
            copartitioned: None,
        }
    }
}

/// Every topic a configuration needs, the one list everything that creates or checks topics
/// reads (`topics create`, the startup check, the demo, the benchmarks, the tests): the order
/// stage's inputs, outputs and changelogs with `topics.order_partitions`, the SKU stage's with
/// `topics.sku_partitions`, the dead-letter topic with one.
pub fn topic_specs(config: &Config) -> Vec<TopicSpec> {
    let names = TopicNames::from_config(config);
    let t = &config.topics;
    let (order, sku) = (Some(Stage::Order), Some(Stage::Sku));
    let mut specs: Vec<TopicSpec> = [
        (&names.orders, t.order_partitions, order),
        (&names.payments, t.order_partitions, order),
        (&names.logistics, t.order_partitions, order),
        (&names.reservation_expiry, t.order_partitions, None),
        (&names.tracking_status, t.order_partitions, None),
        (&names.inventory, t.sku_partitions, sku),
        (&names.sku_commands, t.sku_partitions, sku),
        (&names.oversell_alerts, t.sku_partitions, None),
        (&names.dead_letters, 1, None),
    ]
    .into_iter()
    .map(|(name, n, copartitioned)| TopicSpec {
        copartitioned,
        ..TopicSpec::new(name, n)
    })
    .collect();
    for (stage, n) in [
        (Stage::Order, t.order_partitions),
        (Stage::Sku, t.sku_partitions),
    ] {
        specs.extend(names.changelogs(stage).iter().map(|(_, name)| TopicSpec {
            compacted: true,
            copartitioned: Some(stage),
            ..TopicSpec::new(name, n)
        }));
    }
    specs
}

/// Creates every topic of `topic_specs` that does not exist yet; returns the names created.
pub async fn create_topics(config: &Config) -> Result<Vec<String>, ClientError> {
    create_missing(config, &topic_specs(config)).await
}

/// Creates every topic of `topic_specs` on librdkafka's in-process mock cluster, which has no
/// CreateTopics request: the demo, `bench --phase metrics` and the fast tests use it, so they
/// know every topic `topics create` knows (a changelog added later included) from one list.
/// The mock keeps no topic configs, so changelogs are created without compaction there.
pub fn create_on_mock<C: ClientContext>(
    cluster: &MockCluster<'_, C>,
    config: &Config,
) -> Result<Vec<String>, ClientError> {
    let mut created = Vec::new();
    for t in topic_specs(config) {
        cluster.create_topic(&t.name, t.partitions as i32, 1)?;
        created.push(t.name);
    }
    Ok(created)
}

/// The replicas a created topic gets on a cluster of `brokers`, and its `min.insync.replicas`
/// (None with a single replica: the broker's default of 1 is all it can be).
pub fn replication(topics: &crate::config::TopicsConfig, brokers: usize) -> (u32, Option<u32>) {
    let replicas = topics
        .replication_factor
        .min(u32::try_from(brokers).unwrap_or(u32::MAX))
        .max(1);
    let min_insync = (replicas > 1).then(|| topics.min_insync_replicas.clamp(1, replicas));
    (replicas, min_insync)
}

/// Kafka's default `max.message.bytes` for a topic: the largest record batch it takes.
const BROKER_MESSAGE_BYTES_DEFAULT: u64 = 1_048_588;

/// The `max.message.bytes` a created topic needs so that the broker takes every record batch
/// the producer is allowed to build (its `message.max.bytes`, librdkafka's default 1,000,000),
/// or None where the broker's default already does. A broker that refused a batch the producer
/// accepted would fail it on every retry, and orderfold cannot tell a batch of small records
/// from one record too large there; the producer's own limit is where a too-large record is
/// caught and replaced by a stub dead letter.
pub fn topic_message_bytes(config: &Config) -> Option<u64> {
    let producer = config
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    (producer > BROKER_MESSAGE_BYTES_DEFAULT).then_some(producer)
}

/// Creates those of `wanted` that do not exist yet; returns their names.
pub async fn create_missing(
    config: &Config,
    wanted: &[TopicSpec],
) -> Result<Vec<String>, ClientError> {
    let names: Vec<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    let existing = partition_counts(config, &names)?;
    let lag_ms = config.topics.changelog_min_compaction_lag_ms.to_string();
    let consumer: BaseConsumer = client_config(config).create()?;
    let brokers = consumer
        .fetch_metadata(None, REQUEST_TIMEOUT)?
        .brokers()
        .len();
    let (replicas, min_insync) = replication(&config.topics, brokers);
    if replicas < config.topics.replication_factor {
        tracing::warn!(
            replication_factor = config.topics.replication_factor,
            brokers,
            replicas,
            "the cluster has fewer brokers than topics.replication_factor; topics get fewer replicas"
        );
    }
    let min_insync = min_insync.map(|n| n.to_string());
    let message_bytes = topic_message_bytes(config).map(|n| n.to_string());
    let new: Vec<NewTopic> = wanted
        .iter()
        .filter(|w| !existing.contains_key(&w.name))
        .map(|w| {
            let mut topic = NewTopic::new(
                &w.name,
                w.partitions as i32,
                TopicReplication::Fixed(replicas as i32),
            );
            if let Some(n) = &min_insync {
                topic = topic.set("min.insync.replicas", n);
            }
            if let Some(n) = &message_bytes {
                topic = topic.set("max.message.bytes", n);
            }
            if w.compacted {
                topic
                    .set("cleanup.policy", "compact")
                    .set("min.compaction.lag.ms", &lag_ms)
            } else {
                topic
            }
        })
        .collect();
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let mut created = Vec::new();
    for result in admin(config)?.create_topics(&new, &opts).await? {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(ClientError::Create { topic, code }),
        }
    }
    Ok(created)
}

/// One record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp, when it has one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// End offsets (the offset after the last record) per (topic, partition).
pub type EndOffsets = BTreeMap<(String, i32), i64>;

/// Reads every partition of `topic` from its start to the end offsets it has now, with no
/// consumer group. For checks and summaries, not for processing.
pub fn read_to_end(config: &Config, topic: &str) -> Result<Vec<ReadRecord>, KafkaError> {
    read_until(config, topic, None)
}

/// Like `read_to_end`, but to the given end offsets where known (a broker's own end offset
/// can be wrong: tansu 0.6.0's memory engine reports the start of the last batch plus one).
pub fn read_until(
    config: &Config,
    topic: &str,
    known_ends: Option<&EndOffsets>,
) -> Result<Vec<ReadRecord>, KafkaError> {
    let mut out = Vec::new();
    scan_until(config, topic, known_ends, |r| out.push(r))?;
    Ok(out)
}

/// Hands every record of `topic` up to its end offsets (as `read_until` finds them) to `f`,
/// holding none: a bounded run scans a whole inventory topic this way at startup, and a
/// million opening-stock records held at once would be most of its memory. Fails when no
/// record arrives for `REQUEST_TIMEOUT`, not when the whole topic takes longer than that.
pub fn scan_until(
    config: &Config,
    topic: &str,
    known_ends: Option<&EndOffsets>,
    mut f: impl FnMut(ReadRecord),
) -> Result<(), KafkaError> {
    let consumer: BaseConsumer = client_config(config)
        .set("enable.auto.commit", "false")
        .set(
            "group.id",
            format!("{}.reader", config.kafka.application_id),
        )
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (low, mut high) = consumer.fetch_watermarks(topic, p.id(), REQUEST_TIMEOUT)?;
        if let Some(end) = known_ends.and_then(|e| e.get(&(topic.to_string(), p.id()))) {
            high = *end;
        }
        if high > low {
            ends.insert(p.id(), high);
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let mut deadline = Instant::now() + REQUEST_TIMEOUT;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        deadline = Instant::now() + REQUEST_TIMEOUT;
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        f(ReadRecord {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            ends.remove(&m.partition());
        }
    }
    Ok(())
}

/// Headers as librdkafka takes them.
pub fn owned_headers(headers: &[(String, Vec<u8>)]) -> Option<OwnedHeaders> {
    if headers.is_empty() {
        return None;
    }
    let mut h = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    Some(h)
}

/// Sends records with a plain producer and waits until the broker has acknowledged them all:
/// how `generate` and the tests write input. A full local queue is drained, not an error.
/// Returns the end offset of each partition written, as the acknowledgements prove it.
/// With `rate_per_s`, paces the sends to that many records per second of wall-clock time, as a
/// steady upstream would.
pub fn produce_all<'a>(
    config: &Config,
    records: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>)>,
    rate_per_s: Option<u64>,
    mut progress: impl FnMut(u64),
) -> Result<EndOffsets, ClientError> {
    let started = Instant::now();
    let producer: BaseProducer<Acks> =
        producer_config(config).create_with_context(Acks::tracking_ends())?;
    let mut sent = 0;
    for (topic, key, value) in records {
        let mut record: BaseRecord<[u8], [u8], usize> = BaseRecord::with_opaque_to(topic, 0);
        record.key = key;
        record.payload = value;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        sent += 1;
        if let Some(rate) = rate_per_s.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                producer.poll(Duration::ZERO);
                std::thread::sleep(wait);
            }
        }
        if sent % 10_000 == 0 {
            producer.poll(Duration::ZERO);
            progress(sent);
        }
    }
    producer.flush(REQUEST_TIMEOUT)?;
    producer.context().take_failures()?;
    progress(sent);
    Ok(producer.context().ends())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TopicsConfig;

    #[test]
    fn topics_get_three_replicas_and_two_in_sync_where_the_cluster_has_the_brokers() {
        let topics = TopicsConfig::default();
        assert_eq!(replication(&topics, 5), (3, Some(2)));
        assert_eq!(replication(&topics, 3), (3, Some(2)));
        assert_eq!(replication(&topics, 2), (2, Some(2)));
        // A single-node broker (tansu): one replica, and min.insync.replicas left alone.
        assert_eq!(replication(&topics, 1), (1, None));
        assert_eq!(replication(&topics, 0), (1, None));
        let loose = TopicsConfig {
            replication_factor: 3,
            min_insync_replicas: 9,
            ..TopicsConfig::default()
        };
        assert_eq!(replication(&loose, 3), (3, Some(3)));
    }

    /// A producer allowed batches larger than a broker takes by default makes every created
    /// topic take them too; otherwise the broker's default stands.
    #[test]
    fn created_topics_take_every_batch_the_producer_may_build() {
        let mut config = Config::default();
        assert_eq!(topic_message_bytes(&config), None);
        config
            .kafka
            .properties
            .insert("message.max.bytes".into(), "4096".into());
        assert_eq!(topic_message_bytes(&config), None);
        config
            .kafka
            .properties
            .insert("message.max.bytes".into(), "5000000".into());
        assert_eq!(topic_message_bytes(&config), Some(5_000_000));
    }
}
