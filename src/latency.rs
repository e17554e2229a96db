//! End-to-end latency under a paced load: orderfold runs as the live service while a paced
//! producer publishes a generated workload stamped with the wall clock, and a consumer
//! times each output from the moment the input that caused it was handed to the producer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::bench::BenchError;
use crate::codec::Codec;
use crate::config::Config;
use crate::event::{LogisticsEvent, Millis, OrderBody, OversellAlert, PaymentBody, TrackingStatus};
use crate::generate::{Generated, Payload};
use crate::ids;
use crate::kafka::{self, Acks, ClientError, TopicNames};
use crate::metrics::Metrics;
use crate::runtime::{self, Mode, RuntimeError, Shutdown, Status};

/// How long the pass waits for orderfold to join its group and open its tasks.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// After the last send, outputs still arriving are waited for until none came for this long.
const QUIET: Duration = Duration::from_secs(3);
/// The hard limit on that wait.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
            samples[i].as_secs_f64() * 1e3
        };
        Percentiles {
            count: samples.len() as u64,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub rate_per_s: u64,
    pub sent: u64,
    /// How long the sends took: `sent / seconds` is the rate actually achieved.
    pub send_seconds: f64,
    /// Oversell alerts (order stage, repartition topic, SKU stage): the figure users wait on.
    pub alerts: Percentiles,
    /// Tracking statuses (order stage only).
    pub tracking: Percentiles,
    /// The broker alone: an input scan from the producer to a plain consumer.
    pub broker_hop: Percentiles,
}

/// What a consumer times an output against.
#[derive(Default)]
struct Sent {
    at: HashMap<String, Instant>,
    /// SKUs of each order, to name the alerts its capture may raise.
    skus: HashMap<String, Vec<String>>,
}

impl Sent {
    fn await_output(&mut self, id: String, now: Instant) {
        self.at.entry(id).or_insert(now);
    }

    /// Restamps `record` with the wall clock and notes every output it may cause.
    fn note(&mut self, record: &mut Generated, wall_ms: Millis, now: Instant) {
        match &mut record.payload {
            Payload::Order(e) => {
                e.occurred_at = wall_ms;
                if let OrderBody::OrderPlaced(p) = &e.body {
                    let skus: Vec<String> = p.lines.iter().map(|l| l.sku.clone()).collect();
                    for sku in &skus {
                        self.await_output(ids::alert_event_id(&e.event_id, sku), now);
                    }
                    self.skus.entry(e.order_id.clone()).or_insert(skus);
                }
            }
            Payload::Payment(e) => {
                e.occurred_at = wall_ms;
                if let PaymentBody::PaymentCaptured(_) = e.body {
                    let skus = self.skus.get(&e.order_id).cloned().unwrap_or_default();
                    for sku in skus {
                        self.await_output(ids::alert_event_id(&e.event_id, &sku), now);
                    }
                }
            }
            Payload::Logistics(e) => {
                e.occurred_at = wall_ms;
                self.await_output(ids::tracking_event_id(&e.event_id), now);
                self.await_output(format!("in:{}", e.event_id), now);
            }
            Payload::Inventory(e) => {
                e.occurred_at = wall_ms;
                self.await_output(ids::alert_event_id(&e.event_id, &e.sku), now);
            }
            Payload::Malformed(_) => {}
        }
    }
}

fn wall_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Runs orderfold live on `config`'s (fresh) topics and publishes `records` at `rate_per_s`,
/// each stamped with the wall clock as it is sent; returns the latency of every output that a
/// sent record caused.
pub fn latency(
    config: &Config,
    mut records: Vec<Generated>,
    rate_per_s: u64,
) -> Result<LatencyReport, BenchError> {
    let names = TopicNames::from_config(config);
    let codec = Codec::new().map_err(|e| ClientError::Io(e.to_string()))?;
    let metrics = Metrics::new(config.metrics.enabled).map_err(RuntimeError::from)?;
    let status = Arc::new(Status::new(metrics));
    let shutdown = Shutdown::default();
    let sent = Mutex::new(Sent::default());
    let done_sending = std::sync::atomic::AtomicBool::new(false);

    std::thread::scope(|s| -> Result<LatencyReport, BenchError> {
        let worker = s.spawn(|| runtime::run(config, Mode::Live, shutdown.clone(), status.clone()));
        let started = Instant::now();
        while !status.ready() {
            if worker.is_finished() || started.elapsed() > READY_TIMEOUT {
                shutdown.request();
                return Err(ClientError::Io(format!(
                    "orderfold was not ready within {READY_TIMEOUT:?}: {}",
                    status.not_ready_because().unwrap_or_default()
                ))
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let consumer: BaseConsumer = kafka::client_config(config)
            .set(
                "group.id",
                format!("{}.latency", config.kafka.application_id),
            )
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        let counts = kafka::partition_counts(
            config,
            &[
                &names.oversell_alerts,
                &names.tracking_status,
                &names.logistics,
            ],
        )?;
        for (topic, n) in &counts {
            for p in 0..*n as i32 {
                tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        let (sent, done_sending, names, codec) = (&sent, &done_sending, &names, &codec);
        let reader = s.spawn(move || -> Result<[Vec<Duration>; 3], BenchError> {
            let mut samples: [Vec<Duration>; 3] = Default::default();
            let mut last_output = Instant::now();
            let mut drain_started = None;
            loop {
                if done_sending.load(std::sync::atomic::Ordering::Acquire) {
                    let since = *drain_started.get_or_insert_with(Instant::now);
                    // Quiet since the sends ended, or since the last output after that.
                    let quiet = last_output.max(since).elapsed();
                    if quiet > QUIET || since.elapsed() > DRAIN_TIMEOUT {
                        return Ok(samples);
                    }
                }
                let Some(m) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let m = m?;
                let received = Instant::now();
                let Some(bytes) = m.payload() else { continue };
                let (id, which) = if m.topic() == names.oversell_alerts {
                    match codec.decode::<OversellAlert>(bytes) {
                        Ok(a) => (a.event_id, 0),
                        Err(_) => continue,
                    }
                } else if m.topic() == names.tracking_status {
                    match codec.decode::<TrackingStatus>(bytes) {
                        Ok(t) => (t.event_id, 1),
                        Err(_) => continue,
                    }
                } else {
                    match codec.decode::<LogisticsEvent>(bytes) {
                        Ok(e) => (format!("in:{}", e.event_id), 2),
                        Err(_) => continue,
                    }
                };
                let at = sent
                    .lock()
                    .map_err(|_| ClientError::Io("poisoned".into()))?
                    .at
                    .remove(&id);
                if let Some(at) = at {
                    samples[which].push(received.saturating_duration_since(at));
                    if which < 2 {
                        last_output = received;
                    }
                }
            }
        });

        // The load: a plain producer that sends each record as soon as it is due.
        let producer: BaseProducer<Acks> = kafka::producer_config(config)
            .set("linger.ms", "0")
            .create_with_context(Acks::default())?;
        let send_started = Instant::now();
        let mut count = 0u64;
        let result = (|| -> Result<(), BenchError> {
            for record in &mut records {
                let due = Duration::from_secs_f64(count as f64 / rate_per_s.max(1) as f64);
                if let Some(wait) = due.checked_sub(send_started.elapsed()) {
                    producer.poll(Duration::ZERO);
                    std::thread::sleep(wait);
                }
                let Some(topic) = names.external(record.topic) else {
                    continue;
                };
                let now = Instant::now();
                sent.lock()
                    .map_err(|_| ClientError::Io("poisoned".into()))?
                    .note(record, wall_ms(), now);
                let value = record
                    .encode(codec)
                    .map_err(|e| ClientError::Io(e.to_string()))?;
                let mut r: BaseRecord<[u8], [u8], usize> = BaseRecord::with_opaque_to(topic, 0);
                r.key = record.key.as_deref().map(str::as_bytes);
                r.payload = Some(&value);
                loop {
                    match producer.send(r) {
                        Ok(()) => break,
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(
                                RDKafkaErrorCode::QueueFull,
                            ),
                            back,
                        )) => {
                            r = back;
                            producer.poll(Duration::from_millis(1));
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                }
                count += 1;
            }
            producer.flush(kafka::REQUEST_TIMEOUT)?;
            Ok(())
        })();
        let send_seconds = send_started.elapsed().as_secs_f64();
        done_sending.store(true, std::sync::atomic::Ordering::Release);
        let samples = reader
            .join()
            .map_err(|_| ClientError::Io("the latency reader panicked".into()))?;
        shutdown.request();
        worker
            .join()
            .map_err(|_| ClientError::Io("the runtime thread panicked".into()))??;
        result?;
        let [alerts, tracking, hop] = samples?;
        Ok(LatencyReport {
            rate_per_s,
            sent: count,
            send_seconds,
            alerts: Percentiles::of(alerts),
            tracking: Percentiles::of(tracking),
            broker_hop: Percentiles::of(hop),
        })
    })
}
