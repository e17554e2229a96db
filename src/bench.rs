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
use crate::metrics::Metrics;
use crate::runtime::{self, Mode, RuntimeError, Shutdown, Status};

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

    let producer: BaseProducer<Acks> =
        kafka::producer_config(config).create_with_context(Acks::default())?;
    let cpu = cpu_seconds();
    let started = Instant::now();
    let read = read_from_beginning(
        config,
        "ceiling",
        ends,
        &inputs,
        limit,
        BenchError::Timeout,
        |m| {
            let Some(copy) = copies.get(m.topic()) else {
                return Ok(());
            };
            let mut record: BaseRecord<[u8], [u8], usize> = BaseRecord::with_opaque_to(copy, 0);
            record.key = m.key();
            record.payload = m.payload();
            record.partition = Some(m.partition());
            loop {
                match producer.send(record) {
                    Ok(()) => return Ok(()),
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
        },
    )?;
    producer.flush(limit)?;
    producer.context().take_failures()?;
    Ok(Measured {
        events: read,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    })
}

/// Reads, with a consumer of its own, every partition of `topics` in `ends` from its beginning
/// to its end offset, handing each record to `f`; returns how many were read. Errors are the
/// caller's own type; `timeout` makes the one for `limit` passing with no record read. Not a
/// limit on the whole read: a broker serving a million output records from a filling sqlite
/// database took more than ten minutes, and stopping a read that still makes progress only
/// struck out a correct run.
pub(crate) fn read_from_beginning<E: From<rdkafka::error::KafkaError>>(
    config: &Config,
    purpose: &str,
    ends: &EndOffsets,
    topics: &[&str],
    limit: Duration,
    timeout: impl Fn(Duration) -> E,
    mut f: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), E>,
) -> Result<u64, E> {
    let consumer: BaseConsumer = kafka::client_config(config)
        .set(
            "group.id",
            format!("{}.{purpose}", config.kafka.application_id),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let mut remaining: BTreeMap<(String, i32), i64> = ends
        .iter()
        .filter(|((t, _), end)| topics.contains(&t.as_str()) && **end > 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if remaining.is_empty() {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    for (t, p) in remaining.keys() {
        tpl.add_partition_offset(t, *p, Offset::Beginning)?;
    }
    let mut last_record = Instant::now();
    consumer.assign(&tpl)?;
    let mut read = 0;
    while !remaining.is_empty() {
        if last_record.elapsed() > limit {
            return Err(timeout(limit));
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        last_record = Instant::now();
        read += 1;
        f(&m)?;
        let key = (m.topic().to_string(), m.partition());
        if remaining
            .get(&key)
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            remaining.remove(&key);
        }
    }
    Ok(read)
}

/// orderfold itself: a bounded run to the given end offsets on fresh state (what a replay
/// from earliest of a fully written log is).
pub fn orderfold(config: &Config, ends: &EndOffsets) -> Result<Measured, BenchError> {
    Ok(timed(config, Mode::UntilOffsets(ends.clone()), ends)?.whole)
}

/// orderfold as the live service on fresh state: one group member, timed from its start until
/// it has processed every order-stage record of the log, then stopped.
pub fn live(config: &Config, ends: &EndOffsets) -> Result<Measured, BenchError> {
    Ok(timed(config, Mode::Live, ends)?.order_stage)
}

/// A run measured two ways.
struct Timed {
    /// Until the run returned (a bounded run: everything applied and committed).
    whole: Measured,
    /// Until every order-stage record was processed (a live run is stopped there).
    order_stage: Measured,
}

/// Runs `mode` on a worker thread, watching its progress.
fn timed(config: &Config, mode: Mode, ends: &EndOffsets) -> Result<Timed, BenchError> {
    let names = TopicNames::from_config(config);
    let sum = |topics: &[&str]| -> u64 {
        ends.iter()
            .filter(|((t, _), _)| topics.contains(&t.as_str()))
            .map(|(_, e)| (*e).max(0) as u64)
            .sum()
    };
    let order_total = sum(&names.order_inputs());
    let events = sum(&names.external_inputs());
    let live = mode == Mode::Live;
    let metrics = Metrics::new(config.metrics.enabled).map_err(RuntimeError::from)?;
    let progress = Arc::new(Status::new(metrics));
    let shutdown = Shutdown::default();
    let cpu = cpu_seconds();
    let started = Instant::now();
    let (report, order_stage) = std::thread::scope(|s| {
        let worker = s.spawn(|| runtime::run(config, mode, shutdown.clone(), progress.clone()));
        let mut order_stage = None;
        while !worker.is_finished() {
            if order_stage.is_none()
                && progress
                    .order_records
                    .load(std::sync::atomic::Ordering::Relaxed)
                    >= order_total
            {
                order_stage = Some((started.elapsed(), cpu_seconds() - cpu));
                if live {
                    shutdown.request();
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let report = worker
            .join()
            .map_err(|_| ClientError::Io("the runtime thread panicked".into()));
        (report, order_stage)
    });
    let report = report??;
    let whole = Measured {
        events,
        seconds: report.elapsed.as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    };
    let (seconds, cpu_seconds) = order_stage
        .map(|(d, c)| (d.as_secs_f64(), c))
        .unwrap_or((whole.seconds, whole.cpu_seconds));
    Ok(Timed {
        order_stage: Measured {
            events,
            seconds,
            cpu_seconds,
        },
        whole,
    })
}

/// The raw consume ceiling: every input record read to the end offsets, nothing done with it.
pub fn consume(
    config: &Config,
    ends: &EndOffsets,
    limit: Duration,
) -> Result<Measured, BenchError> {
    let names = TopicNames::from_config(config);
    let cpu = cpu_seconds();
    let started = Instant::now();
    let events = read_from_beginning(
        config,
        "consume",
        ends,
        &names.external_inputs(),
        limit,
        BenchError::Timeout,
        |_| Ok(()),
    )?;
    Ok(Measured {
        events,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    })
}

/// The restore benchmark's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreMeasured {
    /// Keys in state: half orders, half SKUs.
    pub keys: u64,
    /// Reading every changelog record with a plain consumer, nothing applied: the ceiling.
    pub consume: Measured,
    /// Restoring every task into an empty state directory (events = records applied).
    pub restore: Measured,
    /// A restart on the same disk after a crash that left an unfinished batch in the
    /// changelogs: opening and restoring every task until all are ready.
    pub ready_after_restart_seconds: f64,
    /// The unfinished batch's records, read but not applied by that restart.
    pub tail_records: u64,
}

/// Restore speed and time-to-ready: fills the stage's main changelogs with `keys` keys and a
/// checkpoint per task, then measures a plain read of them, a restore onto an empty disk, and
/// a restart with local state after a crash left an unfinished batch of 1% of the keys.
pub fn restore(config: &Config, keys: u64) -> Result<RestoreMeasured, BenchError> {
    use crate::changelog::{self, Checkpoint};
    use crate::state::{Stage, StateOptions, Store, TaskDb};

    let names = TopicNames::from_config(config);
    let stores = [
        (Stage::Order, Store::Orders, "order"),
        (Stage::Sku, Store::Skus, "sku"),
    ];
    // A value of the size of an order or a SKU's totals.
    let value = changelog::encode_value(Some(&[0x55; 120])).unwrap_or_default();
    let records = |n: u64, salt: &str| -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let (stage, store, prefix) = stores[(i % 2) as usize];
                let topic = names.changelog(stage, store).to_string();
                (topic, format!("{prefix}-{salt}{i:08}").into_bytes())
            })
            .collect()
    };
    let state = records(keys, "");
    let ends = kafka::produce_all(
        config,
        state
            .iter()
            .map(|(t, k)| (t.as_str(), Some(k.as_slice()), Some(value.as_slice()))),
        None,
        |_| {},
    )?;
    let partitions = |stage: Stage| match stage {
        Stage::Order => config.topics.order_partitions,
        Stage::Sku => config.topics.sku_partitions,
    };
    // One checkpoint per task closes the state written above.
    let producer: BaseProducer<Acks> =
        kafka::producer_config(config).create_with_context(Acks::default())?;
    for stage in [Stage::Order, Stage::Sku] {
        for p in 0..partitions(stage) as i32 {
            let checkpoint = Checkpoint {
                ends: names
                    .changelogs(stage)
                    .iter()
                    .filter(|(s, _)| *s != Store::Meta)
                    .map(|(s, t)| {
                        let end = ends.get(&(t.clone(), p)).copied().unwrap_or(0);
                        (stage.store_name(*s), end)
                    })
                    .collect(),
                meta: Vec::new(),
                base: BTreeMap::new(),
            };
            let bytes = postcard::to_stdvec(&checkpoint)
                .map_err(|e| ClientError::Io(format!("checkpoint: {e}")))?;
            let mut record: BaseRecord<[u8], [u8], usize> =
                BaseRecord::with_opaque_to(names.changelog(stage, Store::Meta), 0);
            record.key = Some(changelog::CHECKPOINT_KEY);
            record.payload = Some(&bytes);
            record.partition = Some(p);
            producer.send(record).map_err(|(e, _)| e)?;
        }
    }
    producer.flush(kafka::REQUEST_TIMEOUT)?;
    producer.context().take_failures()?;

    // The ceiling: every record of those changelogs, read and dropped.
    let topics: Vec<&str> = ends.keys().map(|(t, _)| t.as_str()).collect();
    let cpu = cpu_seconds();
    let started = Instant::now();
    let read = read_from_beginning(
        config,
        "bench",
        &ends,
        &topics,
        Duration::from_secs(600),
        BenchError::Timeout,
        |_| Ok(()),
    )?;
    let consume = Measured {
        events: read,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    };

    let dir = tempfile::tempdir().map_err(|e| ClientError::Io(e.to_string()))?;
    let open_all = || -> Result<(u64, u64), BenchError> {
        let (mut applied, mut tail) = (0, 0);
        for stage in [Stage::Order, Stage::Sku] {
            for p in 0..partitions(stage) {
                let path = dir.path().join(format!("{}-{p}", stage.name()));
                let mut db =
                    TaskDb::open(&path, stage.stores(), &StateOptions::from_config(config))
                        .map_err(|e| ClientError::Io(e.to_string()))?;
                let r = changelog::restore(config, stage, p, &mut db, &|_: u64, _: u64| {})
                    .map_err(|e| ClientError::Io(e.to_string()))?;
                applied += r.applied;
                tail += r.tail;
            }
        }
        Ok((applied, tail))
    };
    let cpu = cpu_seconds();
    let started = Instant::now();
    let (applied, _) = open_all()?;
    let restore = Measured {
        events: applied,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu,
    };

    // A crash in the middle of a commit: an unfinished batch, with no checkpoint, after it.
    let unfinished = records((keys / 100).max(1), "x");
    kafka::produce_all(
        config,
        unfinished
            .iter()
            .map(|(t, k)| (t.as_str(), Some(k.as_slice()), Some(value.as_slice()))),
        None,
        |_| {},
    )?;
    let started = Instant::now();
    let (again, tail) = open_all()?;
    let ready_after_restart_seconds = started.elapsed().as_secs_f64();
    if again != 0 {
        return Err(ClientError::Io(format!("the restart applied {again} records again")).into());
    }
    Ok(RestoreMeasured {
        keys,
        consume,
        restore,
        ready_after_restart_seconds,
        tail_records: tail,
    })
}
