//! The correctness gate of the side-by-side benchmark: what the broker-free driver says a log
//! must emit, and what a system under test did emit on a broker, both counted by distinct
//! event id so that at-least-once repeats do not count twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Codec, DecodeError, RecordKind};
use crate::config::Config;
use crate::driver::{Driver, DriverError, Topology};
use crate::event::{Millis, OversellAlert, ReservationExpired, TrackingStatus};
use crate::generate::Generated;
use crate::kafka::{self, EndOffsets, TopicNames};

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("encoding the log: {0}")]
    Encode(#[from] apache_avro::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{topic} partition {partition} offset {offset}: {error}")]
    Output {
        topic: String,
        partition: i32,
        offset: i64,
        error: DecodeError,
    },
    #[error("reading the outputs stopped: no record arrived for {0:?} before their end offsets")]
    Timeout(Duration),
    #[error("codec: {0}")]
    Schema(#[from] crate::codec::SchemaError),
    #[error("state directory: {0}")]
    Io(#[from] std::io::Error),
}

/// The outputs of one run, by distinct event id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputCounts {
    pub expiries: u64,
    pub tracking: u64,
    /// Oversell alerts by kind (`RESERVATION_REJECTED`, `OVERSOLD`, `NEGATIVE_AVAILABLE`).
    pub alerts: BTreeMap<String, u64>,
}

impl OutputCounts {
    fn count_alerts<'a>(
        alerts: impl IntoIterator<Item = &'a OversellAlert>,
    ) -> BTreeMap<String, u64> {
        let mut by_kind = BTreeMap::new();
        for a in alerts {
            *by_kind.entry(format!("{:?}", a.kind)).or_insert(0) += 1;
        }
        by_kind
    }
}

/// What the broker-free driver makes of a log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expected {
    pub counts: OutputCounts,
    /// E, the largest `occurred_at` of the log's valid records: where a bounded run ends.
    pub end_time_ms: Millis,
}

/// What the broker-free driver emits for `records`, with `config`'s rules and partition counts.
pub fn expected(config: &Config, records: &[Generated]) -> Result<Expected, CompareError> {
    let dir = tempfile::tempdir()?;
    let mut driver = Driver::open(
        dir.path(),
        Topology {
            order_partitions: config.topics.order_partitions,
            sku_partitions: config.topics.sku_partitions,
        },
        config.clone(),
    )?;
    let codec = driver.codec().clone();
    for r in records {
        let value = r.encode(&codec)?;
        driver.pipe(r.topic, r.key.as_deref().map(str::as_bytes), Some(value))?;
    }
    let end_time_ms = driver.end_of_input_time();
    driver.finish(config.limits.commit_records_max)?;
    Ok(Expected {
        counts: OutputCounts {
            expiries: distinct(driver.expiries().iter().map(|e| &e.event_id)),
            tracking: distinct(driver.tracking_statuses().iter().map(|t| &t.event_id)),
            alerts: OutputCounts::count_alerts(&driver.alerts()),
        },
        end_time_ms,
    })
}

fn distinct<'a>(ids: impl Iterator<Item = &'a String>) -> u64 {
    ids.collect::<BTreeSet<_>>().len() as u64
}

/// What is on the broker's output topics now, read from their starts to their end offsets.
pub fn observed(config: &Config, limit: Duration) -> Result<OutputCounts, CompareError> {
    let names = TopicNames::from_config(config);
    let codec = Codec::new()?;
    let mut expiries = BTreeSet::new();
    let mut tracking = BTreeSet::new();
    let mut alerts: BTreeMap<String, OversellAlert> = BTreeMap::new();
    let topics = [
        names.reservation_expiry.as_str(),
        names.tracking_status.as_str(),
        names.oversell_alerts.as_str(),
    ];
    read_all(config, &topics, limit, |topic, partition, offset, bytes| {
        let error = |error| CompareError::Output {
            topic: topic.to_string(),
            partition,
            offset,
            error,
        };
        if topic == names.reservation_expiry {
            let e: ReservationExpired = codec.decode(bytes).map_err(error)?;
            expiries.insert(e.event_id);
        } else if topic == names.tracking_status {
            let t: TrackingStatus = codec.decode(bytes).map_err(error)?;
            tracking.insert(t.event_id);
        } else {
            let a: OversellAlert = codec.decode(bytes).map_err(error)?;
            alerts.insert(a.event_id.clone(), a);
        }
        Ok(())
    })?;
    Ok(OutputCounts {
        expiries: expiries.len() as u64,
        tracking: tracking.len() as u64,
        alerts: OutputCounts::count_alerts(alerts.values()),
    })
}

/// The end offset of every partition of `topics` that exists on the broker now.
pub fn end_offsets(config: &Config, topics: &[&str]) -> Result<EndOffsets, CompareError> {
    let consumer: BaseConsumer = kafka::client_config(config).create()?;
    let mut ends = EndOffsets::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), kafka::REQUEST_TIMEOUT)?;
        for p in md.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), kafka::REQUEST_TIMEOUT)?;
            ends.insert((topic.to_string(), p.id()), high);
        }
    }
    Ok(ends)
}

/// Hands every record of `topics`, from each partition's start to its end offset now, to `f`.
fn read_all(
    config: &Config,
    topics: &[&str],
    limit: Duration,
    mut f: impl FnMut(&str, i32, i64, &[u8]) -> Result<(), CompareError>,
) -> Result<(), CompareError> {
    let ends = end_offsets(config, topics)?;
    crate::bench::read_from_beginning(
        config,
        "compare",
        &ends,
        topics,
        limit,
        CompareError::Timeout,
        |m| match m.payload() {
            Some(bytes) => f(m.topic(), m.partition(), m.offset(), bytes),
            None => Ok(()),
        },
    )?;
    Ok(())
}

/// The two-byte marker and fingerprint that open each record type's single-object encoding,
/// in hex, by record name: a peer writes exactly these, so the checker reads its outputs.
pub fn single_object_headers() -> Result<BTreeMap<String, String>, CompareError> {
    let mut headers = BTreeMap::new();
    for kind in RecordKind::ALL {
        let schema = apache_avro::Schema::parse_str(kind.schema_text())?;
        let header: String = [0xC3u8, 0x01]
            .iter()
            .chain(codec::fingerprint(&schema)?.iter())
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = kind.full_name();
        headers.insert(name.rsplit('.').next().unwrap_or(name).to_string(), header);
    }
    Ok(headers)
}
