//! The end-to-end benchmark on a real broker: orderfold's throughput on a generated workload
//! against the same broker's raw ceiling (consume the inputs and produce the same bytes back,
//! no state), measured in one run so the ratio compares like with like.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;
use crate::kafka::{self, Acks, ClientError, EndOffsets, TopicNames, TopicSpec};
use crate::runtime::{self, Mode, Progress, RuntimeError, Shutdown};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the copy did not reach the end offsets within {0:?}")]
    Timeout(Duration),
}

/// One measured pass over the input.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub events: u64,
    pub seconds: f64,
    /// User plus system CPU time of this process during the pass.
    pub cpu_seconds: f64,
}

impl Measured {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    pub fn cpu_seconds_per_million(&self) -> f64 {
        self.cpu_seconds * 1e6 / (self.events.max(1) as f64)
    }
}

/// CPU time this process has used so far.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given, which points
    // to zeroed memory of the right size; RUSAGE_SELF is always valid.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0.0;
        }
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// The ceiling: reads every input partition to its end and produces each record's key, value
/// and partition to a copy topic, with the same producer settings orderfold uses, then waits
/// for the acknowledgements.
pub fn ceiling(
    config: &Config,
    ends: &EndOffsets,
    limit: Duration,
) -> Result<Measured, BenchError> {
    let names = TopicNames::from_config(config);
    let inputs = names.external_inputs();
    let counts = kafka::partition_counts(config, &inputs)?;
    let copies: BTreeMap<&str, String> = inputs.iter().map(|t| (*t, format!("{t}.copy"))).collect();
    let wanted: Vec<TopicSpec> = copies
        .iter()
        .map(|(t, c)| TopicSpec::new(c, counts.get(*t).copied().unwrap_or(1)))
        .collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Io(e.to_string()))?
        .block_on(kafka::create_missing(config, &wanted))?;

    let consumer: BaseConsumer = kafka::client_config(config)
        .set(
            "group.id",
            format!("{}.ceiling", config.kafka.application_id),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let producer: BaseProducer<Acks> =
        kafka::producer_config(config).create_with_context(Acks::default())?;
    let mut remaining: BTreeMap<(String, i32), i64> = ends
        .iter()
        .filter(|((t, _), end)| copies.contains_key(t.as_str()) && **end > 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let events: i64 = remaining.values().sum();
    let mut tpl = TopicPartitionList::new();
    for (t, p) in remaining.keys() {
        tpl.add_partition_offset(t, *p, Offset::Beginning)?;
    }
    let cpu = cpu_seconds();
    let started = Instant::now();
    consumer.assign(&tpl)?;
    while !remaining.is_empty() {
        if started.elapsed() > limit {
            return Err(BenchError::Timeout(limit));
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        let Some(copy) = copies.get(m.topic()) else {
            continue;
        };
        let mut record: BaseRecord<[u8], [u8]> = BaseRecord::to(copy);
        record.key = m.key();
        record.payload = m.payload();
        record.partition = Some(m.partition());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        let key = (m.topic().to_string(), m.partition());
        if remaining
            .get(&key)
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            remaining.remove(&key);
        }
    }
    producer.flush(limit)?;
    producer.context().take_failures()?;
    Ok(Measured {
        events: events as u64,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    })
}

/// orderfold itself: a bounded run to the given end offsets on fresh state.
pub fn orderfold(config: &Config, ends: &EndOffsets) -> Result<Measured, BenchError> {
    let cpu = cpu_seconds();
    let report = runtime::run(
        config,
        Mode::UntilOffsets(ends.clone()),
        Shutdown::default(),
        Arc::new(Progress::default()),
    )?;
    let names = TopicNames::from_config(config);
    let events = names
        .external_inputs()
        .iter()
        .filter_map(|t| report.accounting.get(*t))
        .map(|a| a.consumed)
        .sum();
    Ok(Measured {
        events,
        seconds: report.elapsed.as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    })
}
