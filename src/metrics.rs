//! Every metric orderfold exports, declared once, and the occurrences that move them: emitting an
//! occurrence writes its log line and updates its metric together, so the log and the dashboard
//! never disagree. Labels are bounded sets (topic, stage, kind, reason, partition number); a SKU
//! or an order id goes to the log line, never to a label.
//!
//! Names follow `orderfold_<name>[_<unit>]_total` for counters. With `metrics.enabled = false`
//! occurrences still log but touch no metric: that is the baseline of the metrics benchmark.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::event::{AlertKind, Millis};

/// End-to-end latency buckets, in seconds: from a millisecond (the target under load) to an
/// hour (a replay of old events, whose latency is their age).
const LATENCY_BUCKETS_S: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3600.0,
];

/// Commit duration buckets, in seconds: a commit waits for the broker's acknowledgements.
const COMMIT_BUCKETS_S: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
];

/// What kind of record a delivery acknowledges. It travels with the record through the
/// producer as the delivery opaque, so an acknowledgement costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Changelogs, checkpoints and anything else without an occurrence of its own.
    Other,
    Expiry,
    Tracking,
    Alert(AlertKind),
    Command,
    DeadLetter,
}

impl Sent {
    fn tag(self) -> usize {
        match self {
            Sent::Other => 0,
            Sent::Expiry => 1,
            Sent::Tracking => 2,
            Sent::Alert(AlertKind::RESERVATION_REJECTED) => 3,
            Sent::Alert(AlertKind::OVERSOLD) => 4,
            Sent::Alert(AlertKind::NEGATIVE_AVAILABLE) => 5,
            Sent::Command => 6,
            Sent::DeadLetter => 7,
        }
    }

    fn from_tag(tag: usize) -> Sent {
        match tag {
            1 => Sent::Expiry,
            2 => Sent::Tracking,
            3 => Sent::Alert(AlertKind::RESERVATION_REJECTED),
            4 => Sent::Alert(AlertKind::OVERSOLD),
            5 => Sent::Alert(AlertKind::NEGATIVE_AVAILABLE),
            6 => Sent::Command,
            7 => Sent::DeadLetter,
            _ => Sent::Other,
        }
    }
}

const TIME_BITS: u32 = 56;
const TIME_MASK: usize = (1 << TIME_BITS) - 1;

/// A record's delivery opaque: its kind in the top 8 bits and the event time that caused it (ms
/// since the epoch, 0 when unknown) in the low 56 bits.
pub fn delivery_opaque(sent: Sent, cause_time: Option<Millis>) -> usize {
    let time = cause_time
        .and_then(|t| usize::try_from(t).ok())
        .filter(|t| *t <= TIME_MASK)
        .unwrap_or(0);
    (sent.tag() << TIME_BITS) | time
}

/// The kind and cause time a delivery opaque carries.
pub fn from_opaque(opaque: usize) -> (Sent, Option<Millis>) {
    let time = opaque & TIME_MASK;
    let cause = (time != 0).then_some(time as Millis);
    (Sent::from_tag(opaque >> TIME_BITS), cause)
}

/// A delivered record's place, for the log line about it.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Things that happen to records and to the instance. `Metrics::emit` writes each one's log
/// line and moves its metric; nothing else touches either.
#[derive(Debug)]
pub enum Occurrence<'a> {
    /// Records taken from the consumer into a task's buffer.
    Consumed { topic: &'a str, records: u64 },
    /// Records a task took from its buffer and handled (applied, dropped as duplicates,
    /// ignored by a rule, dead-lettered or parked).
    Processed { topic: &'a str, records: u64 },
    /// Records applied to state (watermarks on the command topic included).
    Applied { topic: &'a str, records: u64 },
    /// Records dropped because their event id was already seen.
    Duplicates { topic: &'a str, records: u64 },
    /// Input records a task sent to the dead-letter topic (counted when it decides; the
    /// acknowledged dead letters are `DeadLettered`).
    SentToDeadLetters { topic: &'a str, records: u64 },
    /// Records a rule ignored, by the rule's kind.
    Ignored {
        topic: &'a str,
        kind: &'a str,
        records: u64,
    },
    /// A record the broker acknowledged on an output, internal or changelog topic.
    Delivered {
        at: At<'a>,
        sent: Sent,
        key: Option<&'a [u8]>,
        cause_time: Option<Millis>,
    },
    /// A dead letter the broker acknowledged, with the source record it carries.
    DeadLettered {
        at: At<'a>,
        reason: &'a str,
        detail: &'a str,
        source: At<'a>,
    },
    /// A record the broker refused for good; the batch will not commit.
    DeliveryFailed {
        topic: &'a str,
        partition: i32,
        error: &'a str,
    },
    /// A commit failed on the broker's side: its batch is dropped and processed again after
    /// `retry_in` (the `attempts`-th failure in a row), in batches of at most `batch_records`
    /// per task.
    CommitFailed {
        error: &'a str,
        attempts: u32,
        retry_in: Duration,
        batch_records: usize,
    },
    /// A commit finished (all six steps): how long it took, how long of that waited for the
    /// broker and wrote RocksDB, and the records this process has processed so far.
    Committed {
        duration: Duration,
        flush: Duration,
        write: Duration,
        processed: u64,
    },
    /// The group gave or took partitions.
    Rebalanced {
        kind: &'static str,
        order_tasks: usize,
        sku_tasks: usize,
    },
    /// Changelog records a restore applied, and how many are left in the restore in progress.
    Restoring { applied: u64, remaining: u64 },
}

/// The metric families and their pre-resolved label values.
pub struct Metrics {
    registry: Registry,
    enabled: bool,
    consumed: IntCounterVec,
    processed: IntCounterVec,
    produced: IntCounterVec,
    applied: IntCounterVec,
    duplicates: IntCounterVec,
    ignored: IntCounterVec,
    dead_lettered_inputs: IntCounterVec,
    parked: IntGaugeVec,
    dead_letters: IntCounterVec,
    alerts: IntCounterVec,
    expiries: IntCounter,
    delivery_failures: IntCounterVec,
    commit_failures: IntCounter,
    commit_batch: IntGauge,
    commit_duration: Histogram,
    latency: HistogramVec,
    lag: IntGaugeVec,
    stream_time: GaugeVec,
    active_reservations: IntGauge,
    tasks: IntGaugeVec,
    restore_records: IntCounter,
    restore_remaining: IntGauge,
    rebalances: IntCounterVec,
    ready: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.enabled)
            .finish()
    }
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    c: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Every family, registered in a registry of this instance's own (with the process
    /// collector: CPU, resident memory, open files). `enabled = false` keeps the families
    /// (so `/metrics` answers) but never moves them.
    pub fn new(enabled: bool) -> prometheus::Result<Metrics> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            enabled,
            consumed: counter_vec(
                &r,
                "orderfold_records_consumed_total",
                "Records taken from the consumer, by input topic.",
                &["topic"],
            )?,
            processed: counter_vec(
                &r,
                "orderfold_records_processed_total",
                "Records a task handled (applied, duplicate, ignored, dead-lettered or parked), by input topic.",
                &["topic"],
            )?,
            produced: counter_vec(
                &r,
                "orderfold_records_produced_total",
                "Records the broker acknowledged, by topic (outputs, commands, dead letters, changelogs).",
                &["topic"],
            )?,
            applied: counter_vec(
                &r,
                "orderfold_records_applied_total",
                "Records applied to state, by input topic (watermarks on the command topic included).",
                &["topic"],
            )?,
            dead_lettered_inputs: counter_vec(
                &r,
                "orderfold_records_dead_lettered_total",
                "Input records a task sent to the dead-letter topic, by input topic.",
                &["topic"],
            )?,
            parked: gauge_vec(
                &r,
                "orderfold_records_parked",
                "Records parked now (orphans waiting for their order, commands waiting for the watermark), by input topic.",
                &["topic"],
            )?,
            duplicates: counter_vec(
                &r,
                "orderfold_duplicates_total",
                "Records dropped because their event id was already seen, by input topic.",
                &["topic"],
            )?,
            ignored: counter_vec(
                &r,
                "orderfold_ignored_total",
                "Records a rule ignored, by input topic and the rule's kind.",
                &["topic", "kind"],
            )?,
            dead_letters: counter_vec(
                &r,
                "orderfold_dead_letters_total",
                "Records sent to the dead-letter topic, by reason.",
                &["reason"],
            )?,
            alerts: counter_vec(
                &r,
                "orderfold_alerts_total",
                "Oversell alerts delivered, by kind.",
                &["kind"],
            )?,
            expiries: register(
                &r,
                IntCounter::new(
                    "orderfold_expiries_total",
                    "Reservation expiries delivered.",
                )?,
            )?,
            delivery_failures: counter_vec(
                &r,
                "orderfold_delivery_failures_total",
                "Records the broker refused for good (the batch did not commit), by topic.",
                &["topic"],
            )?,
            commit_failures: register(
                &r,
                IntCounter::new(
                    "orderfold_commit_failures_total",
                    "Batches that failed on the broker's side (a commit, a refused record, a full producer queue, a restore); each was processed again.",
                )?,
            )?,
            commit_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "orderfold_commit_duration_seconds",
                        "Time a commit took, from preparing the batch to the group offset commit.",
                    )
                    .buckets(COMMIT_BUCKETS_S.to_vec()),
                )?,
            )?,
            latency: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "orderfold_end_to_end_latency_seconds",
                        "From the causing event's occurred_at to the broker's acknowledgement of the output, by output topic.",
                    )
                    .buckets(LATENCY_BUCKETS_S.to_vec()),
                    &["topic"],
                )?,
            )?,
            lag: gauge_vec(
                &r,
                "orderfold_consumer_lag_records",
                "Records between a task's next offset and its partition's high watermark, per assigned input partition.",
                &["topic", "partition"],
            )?,
            stream_time: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "orderfold_stream_time_seconds",
                        "The slowest task's stream time per stage, in seconds since the epoch.",
                    ),
                    &["stage"],
                )?,
            )?,
            commit_batch: register(
                &r,
                IntGauge::new(
                    "orderfold_commit_batch_records",
                    "Records a task processes before it commits: limits.commit_records_max, lower after failed commits.",
                )?,
            )?,
            active_reservations: register(
                &r,
                IntGauge::new(
                    "orderfold_active_reservations",
                    "Unpaid orders holding stock (reservation timers) in this instance's order tasks.",
                )?,
            )?,
            tasks: gauge_vec(
                &r,
                "orderfold_tasks_assigned",
                "Tasks this instance runs, by stage.",
                &["stage"],
            )?,
            restore_records: register(
                &r,
                IntCounter::new(
                    "orderfold_restore_records_total",
                    "Changelog records applied by restores.",
                )?,
            )?,
            restore_remaining: register(
                &r,
                IntGauge::new(
                    "orderfold_restore_remaining_records",
                    "Changelog records the restore in progress has still to apply.",
                )?,
            )?,
            rebalances: counter_vec(
                &r,
                "orderfold_rebalances_total",
                "Partition assignments and revocations, by kind.",
                &["kind"],
            )?,
            ready: register(
                &r,
                IntGauge::new(
                    "orderfold_ready",
                    "1 when every assigned task is restored and running, else 0.",
                )?,
            )?,
            registry: r,
        })
    }

    /// Creates every labelled series whose label values are known now, at zero, so every family
    /// shows from the first scrape and a rate over a series that later moves starts from zero.
    pub fn declare(&self, order_inputs: &[&str], sku_inputs: &[&str], outputs: &[&str]) {
        for topic in order_inputs.iter().chain(sku_inputs) {
            self.consumed.with_label_values(&[topic]);
            self.processed.with_label_values(&[topic]);
            self.applied.with_label_values(&[topic]);
            self.duplicates.with_label_values(&[topic]);
            self.dead_lettered_inputs.with_label_values(&[topic]);
            self.parked.with_label_values(&[topic]);
        }
        // Only the order stage's rules ignore events.
        for topic in order_inputs {
            for kind in crate::fold::Ignored::ALL {
                self.ignored.with_label_values(&[topic, kind.label()]);
            }
        }
        for topic in outputs {
            self.produced.with_label_values(&[topic]);
            self.delivery_failures.with_label_values(&[topic]);
        }
        for reason in crate::sink::DeadLetterReason::ALL {
            self.dead_letters.with_label_values(&[reason.label()]);
        }
        for kind in [
            AlertKind::RESERVATION_REJECTED,
            AlertKind::OVERSOLD,
            AlertKind::NEGATIVE_AVAILABLE,
        ] {
            self.alerts.with_label_values(&[kind.label()]);
        }
        for stage in ["order", "sku"] {
            self.tasks.with_label_values(&[stage]);
        }
        for kind in ["assigned", "revoked"] {
            self.rebalances.with_label_values(&[kind]);
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }

    /// Writes the occurrence's log line and moves its metric.
    pub fn emit(&self, o: Occurrence<'_>) {
        match o {
            Occurrence::Consumed { topic, records } => {
                if self.enabled {
                    self.consumed.with_label_values(&[topic]).inc_by(records);
                }
            }
            Occurrence::Processed { topic, records } => {
                if self.enabled {
                    self.processed.with_label_values(&[topic]).inc_by(records);
                }
            }
            Occurrence::Applied { topic, records } => {
                if self.enabled {
                    self.applied.with_label_values(&[topic]).inc_by(records);
                }
            }
            Occurrence::SentToDeadLetters { topic, records } => {
                if self.enabled {
                    self.dead_lettered_inputs
                        .with_label_values(&[topic])
                        .inc_by(records);
                }
            }
            Occurrence::Duplicates { topic, records } => {
                tracing::debug!(topic, records, "duplicates dropped");
                if self.enabled {
                    self.duplicates.with_label_values(&[topic]).inc_by(records);
                }
            }
            Occurrence::Ignored {
                topic,
                kind,
                records,
            } => {
                tracing::debug!(topic, kind, records, "events ignored by a rule");
                if self.enabled {
                    self.ignored
                        .with_label_values(&[topic, kind])
                        .inc_by(records);
                }
            }
            Occurrence::Delivered {
                at,
                sent,
                key,
                cause_time,
            } => self.delivered(at, sent, key, cause_time),
            Occurrence::DeadLettered {
                at,
                reason,
                detail,
                source,
            } => {
                tracing::warn!(
                    topic = at.topic,
                    partition = at.partition,
                    offset = at.offset,
                    reason,
                    detail,
                    source_topic = source.topic,
                    source_partition = source.partition,
                    source_offset = source.offset,
                    "dead-lettered"
                );
                if self.enabled {
                    self.produced.with_label_values(&[at.topic]).inc();
                    self.dead_letters.with_label_values(&[reason]).inc();
                }
            }
            Occurrence::DeliveryFailed {
                topic,
                partition,
                error,
            } => {
                // One line per record would flood the log when the broker is away; the failed
                // commit's warning carries the count and the first error.
                tracing::debug!(topic, partition, error, "delivery failed");
                if self.enabled {
                    self.delivery_failures.with_label_values(&[topic]).inc();
                }
            }
            Occurrence::CommitFailed {
                error,
                attempts,
                retry_in,
                batch_records,
            } => {
                tracing::warn!(
                    error,
                    attempts,
                    retry_in_ms = retry_in.as_millis() as u64,
                    batch_records,
                    "commit failed; its batch is dropped and processed again from the last commit"
                );
                if self.enabled {
                    self.commit_failures.inc();
                }
            }
            Occurrence::Committed {
                duration,
                flush,
                write,
                processed,
            } => {
                tracing::debug!(
                    ms = duration.as_millis() as u64,
                    flush_ms = flush.as_millis() as u64,
                    write_ms = write.as_millis() as u64,
                    processed,
                    "committed"
                );
                if self.enabled {
                    self.commit_duration.observe(duration.as_secs_f64());
                }
            }
            Occurrence::Rebalanced {
                kind,
                order_tasks,
                sku_tasks,
            } => {
                tracing::debug!(kind, order_tasks, sku_tasks, "rebalance");
                if self.enabled {
                    self.rebalances.with_label_values(&[kind]).inc();
                    self.tasks
                        .with_label_values(&["order"])
                        .set(order_tasks as i64);
                    self.tasks.with_label_values(&["sku"]).set(sku_tasks as i64);
                }
            }
            Occurrence::Restoring { applied, remaining } => {
                if self.enabled {
                    self.restore_records.inc_by(applied);
                    self.restore_remaining.set(remaining as i64);
                }
            }
        }
    }

    fn delivered(&self, at: At<'_>, sent: Sent, key: Option<&[u8]>, cause: Option<Millis>) {
        match sent {
            Sent::Alert(kind) => {
                tracing::info!(
                    topic = at.topic,
                    partition = at.partition,
                    offset = at.offset,
                    sku = %String::from_utf8_lossy(key.unwrap_or_default()),
                    kind = kind.label(),
                    "oversell alert"
                );
                if self.enabled {
                    self.alerts.with_label_values(&[kind.label()]).inc();
                }
            }
            Sent::Expiry => {
                tracing::debug!(
                    topic = at.topic,
                    partition = at.partition,
                    offset = at.offset,
                    order_id = %String::from_utf8_lossy(key.unwrap_or_default()),
                    "reservation expired"
                );
                if self.enabled {
                    self.expiries.inc();
                }
            }
            Sent::Tracking | Sent::Command | Sent::DeadLetter | Sent::Other => {}
        }
        if !self.enabled {
            return;
        }
        self.produced.with_label_values(&[at.topic]).inc();
        if let (Some(cause), Sent::Alert(_) | Sent::Expiry | Sent::Tracking) = (cause, sent) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as Millis);
            let seconds = now.saturating_sub(cause).max(0) as f64 / 1000.0;
            self.latency.with_label_values(&[at.topic]).observe(seconds);
        }
    }

    /// Sets the lag of every assigned input partition, dropping partitions no longer assigned.
    pub fn set_lag(&self, lags: &[(&str, i32, i64)]) {
        if !self.enabled {
            return;
        }
        self.lag.reset();
        for (topic, partition, lag) in lags {
            self.lag
                .with_label_values(&[*topic, partition.to_string().as_str()])
                .set(*lag);
        }
    }

    /// Sets how many records each input topic has parked now.
    pub fn set_parked(&self, parked: &[(&str, u64)]) {
        if !self.enabled {
            return;
        }
        for (topic, n) in parked {
            self.parked.with_label_values(&[topic]).set(*n as i64);
        }
    }

    /// Sets a stage's stream time (the slowest of its tasks), when it has one.
    pub fn set_stream_time(&self, stage: &str, t: Option<Millis>) {
        if let (true, Some(t)) = (self.enabled, t) {
            self.stream_time
                .with_label_values(&[stage])
                .set(t as f64 / 1000.0);
        }
    }

    pub fn set_commit_batch(&self, records: usize) {
        if self.enabled {
            self.commit_batch.set(records as i64);
        }
    }

    pub fn set_active_reservations(&self, n: u64) {
        if self.enabled {
            self.active_reservations.set(n as i64);
        }
    }

    /// The ready gauge always moves: `/readyz` and the alert rules read it.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opaque_carries_kind_and_cause_time() {
        for sent in [
            Sent::Other,
            Sent::Expiry,
            Sent::Tracking,
            Sent::Alert(AlertKind::OVERSOLD),
            Sent::Alert(AlertKind::NEGATIVE_AVAILABLE),
            Sent::Alert(AlertKind::RESERVATION_REJECTED),
            Sent::Command,
            Sent::DeadLetter,
        ] {
            assert_eq!(
                from_opaque(delivery_opaque(sent, Some(1_700_000_000_123))),
                (sent, Some(1_700_000_000_123))
            );
            assert_eq!(from_opaque(delivery_opaque(sent, None)), (sent, None));
            assert_eq!(from_opaque(delivery_opaque(sent, Some(-5))), (sent, None));
        }
    }

    #[test]
    fn an_occurrence_moves_its_metric_unless_metrics_are_off() {
        let m = Metrics::new(true).unwrap();
        let at = At {
            topic: "oversell-alerts",
            partition: 1,
            offset: 7,
        };
        m.emit(Occurrence::Delivered {
            at,
            sent: Sent::Alert(AlertKind::OVERSOLD),
            key: Some(b"sku-1"),
            cause_time: Some(1),
        });
        let text = String::from_utf8(m.encode().unwrap()).unwrap();
        assert!(
            text.contains(r#"orderfold_alerts_total{kind="oversold"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"orderfold_records_produced_total{topic="oversell-alerts"} 1"#));
        let off = Metrics::new(false).unwrap();
        off.emit(Occurrence::Delivered {
            at,
            sent: Sent::Alert(AlertKind::OVERSOLD),
            key: None,
            cause_time: None,
        });
        let text = String::from_utf8(off.encode().unwrap()).unwrap();
        assert!(!text.contains("orderfold_alerts_total{"), "{text}");
    }
}
