//! The consumer-group runtime: one group member that owns a task per assigned (stage,
//! partition), feeds them from a polling consumer with bounded per-partition buffers, produces
//! their outputs, and commits with the `at_least_once` protocol. Tasks never see the broker;
//! everything Kafka-shaped happens here.

use std::cell::{Cell, RefCell};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::changelog::{self, Checkpoint, Positions, RestoreError};
use crate::codec::Codec;
use crate::config::{Config, Guarantee};
use crate::event::Millis;
use crate::kafka::{self, Acks, ClientError, InputSlot, Layout, TopicNames};
use crate::merge;
use crate::metrics::{self, Metrics, Occurrence, Sent};
use crate::query::Queries;
use crate::sink::{self, DeadLetterReason, Origin, OutRecord, OutTopic, Route};
use crate::stage::order::{self as order_stage, OrderTask};
use crate::stage::sku::{self as sku_stage, SkuTask};
use crate::stage::{Accounting, Input, TaskError};
use crate::state::{Stage, StateError, StateOptions, Store, TaskDb};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("kafka: the producer refused a record for {topic} partition {partition:?}: {error}")]
    Send {
        topic: String,
        partition: Option<i32>,
        error: KafkaError,
    },
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("restore: {0}")]
    Restore(#[from] RestoreError),
    #[error("codec: {0}")]
    Schema(#[from] crate::codec::SchemaError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("exactly_once: the consumer has no group metadata to send with the offsets")]
    NoGroupMetadata,
    #[error("shutdown took longer than runtime.shutdown_timeout_ms; the last batch will be processed again")]
    ShutdownTimeout,
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The service: runs until SIGTERM/SIGINT.
    Live,
    /// Processes the inputs up to the end offsets they have at startup, ends every order task
    /// at the end of input, lets the SKU stage apply everything, commits and returns. A bounded
    /// run is one instance that assigns itself every partition rather than joining the group;
    /// it still commits offsets under the group id for lag. Don't run it beside live members
    /// of the same application id.
    UntilEnd,
    /// `UntilEnd` to the given end offsets instead of the broker's (for a caller that knows
    /// them better, as the writer of the input does).
    UntilOffsets(kafka::EndOffsets),
}

/// What a run did, for the summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunReport {
    /// Order-stage input records processed by this process: after a restart only what was not
    /// committed before, so the runs of one state add up to the input.
    pub processed_this_run: u64,
    /// Per input topic, over the whole life of the state (committed with it).
    pub accounting: BTreeMap<String, Accounting>,
    pub expiries: u64,
    pub tracking_updates: u64,
    pub commands: u64,
    pub alerts: BTreeMap<String, u64>,
    pub late_commands: u64,
    pub forced_commands: u64,
    pub reservations: u64,
    /// What restoring tasks from their changelogs took in this process.
    pub restore: RestoreReport,
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
}

/// Restores done by one process.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreReport {
    /// Tasks opened (each restored what its local state was missing, often nothing).
    pub tasks: u64,
    /// Changelog records applied to local state.
    pub applied: u64,
    /// Records read past a task's last checkpoint (a batch a crash cut short).
    pub tail: u64,
    /// Time spent restoring, all tasks together.
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What the outside can see of a running instance, shared with the HTTP server and progress
/// displays: progress counters, readiness, liveness, the metrics and the tasks' state readers.
#[derive(Debug)]
pub struct Status {
    /// Order-stage input records processed (orders, payments, logistics).
    pub order_records: AtomicU64,
    /// SKU-stage input records processed (inventory and SKU commands).
    pub sku_records: AtomicU64,
    /// Tasks restoring from their changelogs now: the instance is not ready while any is.
    pub restoring_tasks: AtomicU64,
    /// Changelog records applied by restores in this process.
    pub restore_applied: AtomicU64,
    /// Changelog records the restore in progress has still to apply.
    pub restore_remaining: AtomicU64,
    /// The group has answered with an assignment (a bounded run assigns itself at start).
    pub assigned: AtomicBool,
    /// An assignment's tasks are being opened (and restored) now.
    pub opening: AtomicBool,
    /// When the poll loop last went round or a restore last moved, in ms since the epoch:
    /// `/healthz` fails when it is too old.
    pub heartbeat_ms: AtomicU64,
    /// librdkafka reported every broker connection down, and nothing since has shown one up.
    brokers_down: Mutex<Option<String>>,
    /// A commit failed; its batch waits to be processed again (see `Engine::rewind`).
    retrying: Mutex<Option<String>>,
    pub metrics: Arc<Metrics>,
    pub queries: Queries,
}

impl Status {
    pub fn new(metrics: Metrics) -> Status {
        Status {
            order_records: AtomicU64::new(0),
            sku_records: AtomicU64::new(0),
            restoring_tasks: AtomicU64::new(0),
            restore_applied: AtomicU64::new(0),
            restore_remaining: AtomicU64::new(0),
            assigned: AtomicBool::new(false),
            opening: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(now_ms().max(0) as u64),
            brokers_down: Mutex::new(None),
            retrying: Mutex::new(None),
            metrics: Arc::new(metrics),
            queries: Queries::default(),
        }
    }

    /// A status whose metrics never move, for runs nobody scrapes.
    pub fn unobserved() -> Result<Status, prometheus::Error> {
        Ok(Status::new(Metrics::new(false)?))
    }

    /// Ready: a broker is reachable, no failed commit waits for its retry, the group has
    /// assigned this instance its partitions (possibly none) and every assigned task is open
    /// and restored.
    pub fn ready(&self) -> bool {
        self.not_ready_because().is_none()
    }

    /// Why the instance is not ready, or None when it is.
    pub fn not_ready_because(&self) -> Option<String> {
        let fault = |f: &Mutex<Option<String>>| f.lock().ok().and_then(|f| f.clone());
        if let Some(why) = fault(&self.brokers_down) {
            return Some(format!("no broker reachable: {why}"));
        }
        if let Some(why) = fault(&self.retrying) {
            return Some(format!(
                "a commit failed and its batch is being retried: {why}"
            ));
        }
        if !self.assigned.load(Ordering::Acquire) {
            return Some("waiting for the group to assign partitions".into());
        }
        let restoring = self.restoring_tasks.load(Ordering::Acquire);
        if restoring > 0 {
            return Some(format!(
                "restoring {restoring} task(s) from their changelogs, {} records to go in the current one",
                self.restore_remaining.load(Ordering::Relaxed)
            ));
        }
        self.opening
            .load(Ordering::Acquire)
            .then(|| "opening the assigned tasks".to_string())
    }

    /// Milliseconds since the loop last went round.
    pub fn since_heartbeat_ms(&self) -> u64 {
        (now_ms().max(0) as u64).saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    fn beat(&self) {
        self.heartbeat_ms
            .store(now_ms().max(0) as u64, Ordering::Relaxed);
    }

    fn set_ready(&self) {
        self.metrics.set_ready(self.ready());
    }

    fn set_fault(&self, fault: &Mutex<Option<String>>, why: Option<String>) {
        if let Ok(mut f) = fault.lock() {
            *f = why;
        }
        self.set_ready();
    }

    fn has_fault(fault: &Mutex<Option<String>>) -> bool {
        fault.lock().is_ok_and(|f| f.is_some())
    }
}

/// Asks a running runtime to stop: what SIGTERM and SIGINT do.
#[derive(Debug, Default, Clone)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A task and what the consumer has handed it so far.
struct Slot<T, const N: usize> {
    task: T,
    /// Offset of the next record expected per input: a record below it is a redelivery (after
    /// a pause or a seek) and is dropped, so the task sees each offset once.
    fetched: [i64; N],
    processed_since_commit: usize,
    /// Where the task's changelogs stand; None when changelogs are off.
    changelog: Option<TaskChangelog>,
    /// The task's accounting as the metrics last counted it, per input.
    counted: [Counted; N],
}

/// What the metrics have counted of one input's accounting so far.
#[derive(Default)]
struct Counted {
    processed: u64,
    applied: u64,
    duplicates: u64,
    dead_lettered: u64,
    ignored: BTreeMap<String, u64>,
}

impl Counted {
    /// What a task's accounting holds when it opens: counted by the processes before this one.
    fn baseline(acc: &Accounting) -> Counted {
        Counted {
            processed: acc.consumed,
            applied: acc.applied,
            duplicates: acc.duplicates,
            dead_lettered: acc.dead_lettered_total(),
            ignored: acc.ignored.clone(),
        }
    }

    /// Emits what `acc` has counted since the last call. Accounting that went back (a batch
    /// discarded under `exactly_once`) is taken as the new baseline.
    fn emit(&mut self, metrics: &Metrics, topic: &str, acc: &Accounting) {
        let records = acc.consumed.saturating_sub(self.processed);
        if records > 0 {
            metrics.emit(Occurrence::Processed { topic, records });
        }
        let records = acc.applied.saturating_sub(self.applied);
        if records > 0 {
            metrics.emit(Occurrence::Applied { topic, records });
        }
        let records = acc.duplicates.saturating_sub(self.duplicates);
        if records > 0 {
            metrics.emit(Occurrence::Duplicates { topic, records });
        }
        let dead_lettered = acc.dead_lettered_total();
        let records = dead_lettered.saturating_sub(self.dead_lettered);
        if records > 0 {
            metrics.emit(Occurrence::SentToDeadLetters { topic, records });
        }
        if acc.ignored != self.ignored {
            for (kind, n) in &acc.ignored {
                let records = n.saturating_sub(self.ignored.get(kind).copied().unwrap_or(0));
                if records > 0 {
                    metrics.emit(Occurrence::Ignored {
                        topic,
                        kind,
                        records,
                    });
                }
            }
            self.ignored.clone_from(&acc.ignored);
        }
        self.processed = acc.consumed;
        self.applied = acc.applied;
        self.duplicates = acc.duplicates;
        self.dead_lettered = dead_lettered;
    }
}

/// A task's place in its changelogs.
struct TaskChangelog {
    /// Per store (checkpoint included): the end offset of this task's changelog partition as
    /// far as this process knows, which the next checkpoint records.
    ends: BTreeMap<Store, i64>,
    /// Keys of a batch a crash cut short, rewritten with their values at the next commit.
    repair: BTreeSet<(Store, Vec<u8>)>,
    /// Where the task's state begins in each changelog (since the last reset).
    base: BTreeMap<String, i64>,
}

/// One record as taken from the consumer, owned so the consumer can be polled again.
struct Consumed {
    slot: InputSlot,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<Millis>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// Where a bounded run ends: each input partition's end offset at startup, and the latest
/// inventory time (inventory can move the end of input past every order-stage event).
struct Ends {
    offsets: BTreeMap<(String, i32), i64>,
    /// Each input partition's log start offset at startup (0 where an offsets file gave the
    /// end): a partition whose records were all deleted has nothing left to read.
    starts: BTreeMap<(String, i32), i64>,
    inventory_max: Millis,
    order_finished: bool,
}

/// A partition's log start and end offsets as the broker last answered them (None: no
/// answer), and when.
type LiveEnd = (Option<(i64, i64)>, Instant);

/// Everything the poll loop and the rebalance callback share. The callback runs inside
/// `poll`, on the loop's own thread, so the lock is never contended; it exists to give both
/// places mutable access.
struct Engine {
    config: Config,
    names: TopicNames,
    /// Live mode: each order-stage input partition's end offset as last reported (None: the
    /// question failed), and when.
    live_ends: RefCell<BTreeMap<(String, i32), LiveEnd>>,
    /// After an end-offset query failed: no query before this, for any partition.
    end_queries_after: Cell<Option<Instant>>,
    codec: Arc<Codec>,
    layout: Layout,
    partitions: BTreeMap<String, u32>,
    state_root: PathBuf,
    producer: BaseProducer<Acks>,
    /// `exactly_once`: the producer is transactional and a transaction is always open.
    transactional: bool,
    order: BTreeMap<u32, Slot<OrderTask, { order_stage::INPUTS }>>,
    sku: BTreeMap<u32, Slot<SkuTask, { sku_stage::INPUTS }>>,
    paused: BTreeSet<(String, i32)>,
    ends: Option<Ends>,
    /// A replay's start offsets, for tasks that have processed nothing yet.
    start_offsets: Option<kafka::EndOffsets>,
    wall_clock_advance: bool,
    /// Live mode: how often order tasks publish watermarks between commits (None: only at
    /// commits, as bounded runs do, where no one waits on an alert).
    watermark_interval: Option<Duration>,
    /// `runtime.produce_queue_wait_ms`: the longest a record waits for room in the queue.
    queue_wait: Duration,
    last_watermarks: Instant,
    last_commit: Instant,
    dirty: bool,
    status: Arc<Status>,
    /// When the gauges (stream time, reservations, lag) were last set.
    last_gauges: Option<Instant>,
    report: RunReport,
    /// When the first partitions were assigned: throughput counts from here, not from the
    /// group join.
    processing_started: Option<Instant>,
    /// An error raised inside the rebalance callback, which cannot return one.
    fatal: Option<RuntimeError>,
    /// A failed commit's batch, waiting to be processed again.
    retry: Option<Retry>,
    /// Per order partition, the steps of the attempt a failed commit dropped: the reopened
    /// task takes them again (`OrderTask::replay`). Kept only while this member still owns
    /// the partition: after a revocation the next owner decides afresh.
    journals: BTreeMap<u32, Vec<order_stage::Step>>,
    /// The producer holds records of a dropped batch: the next tasks opened get a new one.
    stale_producer: bool,
    /// Records a task processes before it commits: `limits.commit_records_max`, halved by each
    /// failed commit and grown back by a quarter with each one that succeeds. A batch too big
    /// for the broker to acknowledge within `produce_ack_timeout_ms` would otherwise fail the
    /// same way on every retry, and the instance would never commit again.
    batch_records: usize,
}

/// The smallest commit batch a failed commit shrinks to: small enough for a slow broker,
/// large enough that a commit's fixed cost stays a small share of its work.
const BATCH_RECORDS_MIN: usize = 100;

/// A batch whose commit failed on the broker's side (see `Engine::rewind`).
struct Retry {
    /// Failures in a row: the wait doubles with each, up to `runtime.retry_backoff_max_ms`.
    attempts: u32,
    /// While the tasks are closed: when to reopen them from their last commit.
    reopen_at: Option<Instant>,
}

/// The consumer's context: routes rebalances to the engine, and broker reachability to the
/// status.
struct GroupContext {
    engine: Mutex<Engine>,
    status: Arc<Status>,
}

impl ClientContext for GroupContext {
    /// librdkafka's periodic statistics, delivered inside `poll` on the loop's thread.
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.engine().set_lag(&statistics);
        let up = |b: &rdkafka::statistics::Broker| b.nodeid >= 0 && b.state == "UP";
        if statistics.brokers.values().any(up) {
            self.brokers_up();
        }
    }
}

impl GroupContext {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic elsewhere cannot leave the engine half-updated in a way a commit would
        // persist: commits are atomic WriteBatches.
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An error event from the consumer's poll. librdkafka retries connections by itself;
    /// what the process owes the operator is to say it is not ready while no broker answers,
    /// and why. A fatal error ends the client, and the run.
    fn consumer_error(&self, error: KafkaError) -> Result<(), RuntimeError> {
        match error {
            KafkaError::MessageConsumptionFatal(_) => Err(error.into()),
            _ if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => Err(error.into()),
            _ if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) => {
                if !Status::has_fault(&self.status.brokers_down) {
                    tracing::warn!(error = %error, "no broker reachable; not ready until one answers");
                }
                let why = Some(error.to_string());
                self.status.set_fault(&self.status.brokers_down, why);
                Ok(())
            }
            _ => {
                tracing::warn!(error = %error, "consumer error");
                Ok(())
            }
        }
    }

    /// A broker has answered: a record arrived, or the statistics show a connection up.
    fn brokers_up(&self) {
        if Status::has_fault(&self.status.brokers_down) {
            tracing::info!("a broker answers again");
            self.status.set_fault(&self.status.brokers_down, None);
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut engine = self.engine();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => match engine.open_tasks(tpl) {
                Ok(()) => consumer.assign(tpl).map_err(RuntimeError::from),
                // A restore the broker failed (it could not be reached, or answered with an
                // error) is retried as on the reopen path: the partitions are taken, paused,
                // and their tasks opened again after a backoff (`rewind`, `reopen_due`).
                Err(e) if engine.retriable(&e) => consumer
                    .assign(tpl)
                    .map_err(RuntimeError::from)
                    .and_then(|()| engine.rewind(consumer, &e)),
                Err(e) => Err(e),
            },
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if consumer.assignment_lost() => {
                // The group already gave these partitions to another member (this one missed
                // its session or poll deadline): that owner may have restored them, so
                // nothing of this batch may reach the changelogs, the group or disk.
                tracing::warn!("assignment lost; tasks closed without committing their batch");
                engine.drop_batch();
                let unassigned = consumer.unassign().map_err(RuntimeError::from);
                engine.rebalanced("revoked");
                unassigned
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let closed = engine.close_tasks(consumer);
                let unassigned = consumer.unassign().map_err(RuntimeError::from);
                engine.rebalanced("revoked");
                closed.and(unassigned)
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error; dropping the assignment");
                let closed = engine.close_tasks(consumer);
                let unassigned = consumer.unassign().map_err(RuntimeError::from);
                closed.and(unassigned)
            }
        };
        if let Err(e) = result {
            engine.fatal.get_or_insert(e);
        }
    }
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

impl Engine {
    /// Creates the tasks of a new assignment and sets each partition's start to the offset in
    /// the task's RocksDB, not the group's: the state says what has been applied.
    fn open_tasks(&mut self, tpl: &mut TopicPartitionList) -> Result<(), RuntimeError> {
        // The group has answered; the instance is ready once every task below is open.
        self.status.assigned.store(true, Ordering::Release);
        self.status.opening.store(true, Ordering::Release);
        // Whatever a failed commit dropped is processed again by the tasks opened here.
        if let Some(retry) = &mut self.retry {
            retry.reopen_at = None;
        }
        if let Some(ends) = &mut self.ends {
            // A task opens without any end of input (`SkuTask::committed_meta`), so a bounded
            // run's order stage announces its end again to the tasks opened here.
            ends.order_finished = false;
        }
        let opened = self.renew_producer().and_then(|()| self.open_assigned(tpl));
        self.status.opening.store(false, Ordering::Release);
        self.rebalanced("assigned");
        opened
    }

    /// After a dropped batch, a new producer, as a restart would have: the old one's queue
    /// holds records of that batch, and its idempotence state (sequence numbers, an open
    /// transaction) may not match what the broker kept. Dropping it purges them.
    fn renew_producer(&mut self) -> Result<(), RuntimeError> {
        if self.stale_producer {
            self.producer = open_producer(
                &self.config,
                &self.state_root,
                &self.status.metrics,
                self.transactional,
            )?;
            self.stale_producer = false;
        }
        Ok(())
    }

    fn open_assigned(&mut self, tpl: &mut TopicPartitionList) -> Result<(), RuntimeError> {
        let mut starts = Vec::new();
        for e in tpl.elements() {
            let (topic, p) = (e.topic().to_string(), e.partition());
            let Some(slot) = self.names.slot(&topic) else {
                continue;
            };
            let Ok(partition) = u32::try_from(p) else {
                continue;
            };
            let next = match slot {
                InputSlot::Order(rank) => self.order_slot(partition)?.task.next_offset(rank),
                InputSlot::Sku(input) => self.sku_slot(partition)?.task.next_offset(input),
            };
            starts.push((topic, p, next));
        }
        self.processing_started.get_or_insert_with(Instant::now);
        for (topic, p, next) in starts {
            tpl.set_partition_offset(&topic, p, Offset::Offset(next))?;
            self.paused.remove(&(topic, p));
        }
        self.rebalanced("assigned");
        tracing::info!(
            order_tasks = ?self.order.keys().collect::<Vec<_>>(),
            sku_tasks = ?self.sku.keys().collect::<Vec<_>>(),
            "partitions assigned"
        );
        Ok(())
    }

    /// Sets the consumer-lag gauge of every assigned input partition: its end (the last stable
    /// offset, which is the high watermark unless transactions are open) minus the task's
    /// next offset. Records fetched but not processed yet count as lag.
    fn set_lag(&self, statistics: &rdkafka::Statistics) {
        let end = |topic: &str, p: u32| {
            let part = statistics.topics.get(topic)?.partitions.get(&(p as i32))?;
            let end = if part.ls_offset >= 0 {
                part.ls_offset
            } else {
                part.hi_offset
            };
            (end >= 0).then_some(end)
        };
        let mut lags = Vec::new();
        for (p, slot) in &self.order {
            for (rank, topic) in self.names.order_inputs().into_iter().enumerate() {
                if let Some(end) = end(topic, *p) {
                    let lag = (end - slot.task.next_offset(rank)).max(0);
                    lags.push((topic, *p as i32, lag));
                }
            }
        }
        for (p, slot) in &self.sku {
            for (input, topic) in self.names.sku_inputs().into_iter().enumerate() {
                if let Some(end) = end(topic, *p) {
                    let lag = (end - slot.task.next_offset(input)).max(0);
                    lags.push((topic, *p as i32, lag));
                }
            }
        }
        self.status.metrics.set_lag(&lags);
    }

    /// Reports an assignment or revocation with the tasks this instance runs now.
    fn rebalanced(&self, kind: &'static str) {
        self.status.metrics.emit(Occurrence::Rebalanced {
            kind,
            order_tasks: self.order.len(),
            sku_tasks: self.sku.len(),
        });
        self.status.set_ready();
    }

    fn order_slot(
        &mut self,
        p: u32,
    ) -> Result<&mut Slot<OrderTask, { order_stage::INPUTS }>, RuntimeError> {
        match self.order.entry(p) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(v) => {
                let (db, changelog) = open_db(
                    &self.config,
                    &self.state_root,
                    &self.status,
                    &mut self.report.restore,
                    Stage::Order,
                    p,
                )?;
                let topics = self.names.order_inputs().map(String::from);
                let mut task = OrderTask::from_db(db, p, topics, self.codec.clone(), &self.config)?;
                if let Some(steps) = self.journals.remove(&p) {
                    task.replay(steps);
                }
                if let Some(start) = &self.start_offsets {
                    let at = self.names.order_inputs().map(|t| start_of(start, t, p));
                    if at.iter().any(|o| *o > 0) && task.start_at(at) {
                        tracing::info!(partition = p, offsets = ?at, "order task without state starts at the given offsets");
                    }
                }
                let fetched = std::array::from_fn(|i| task.next_offset(i));
                let counted =
                    std::array::from_fn(|i| Counted::baseline(&task.meta().accounting[i]));
                Ok(v.insert(Slot {
                    task,
                    fetched,
                    processed_since_commit: 0,
                    changelog,
                    counted,
                }))
            }
        }
    }

    fn sku_slot(
        &mut self,
        p: u32,
    ) -> Result<&mut Slot<SkuTask, { sku_stage::INPUTS }>, RuntimeError> {
        match self.sku.entry(p) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(v) => {
                let (db, changelog) = open_db(
                    &self.config,
                    &self.state_root,
                    &self.status,
                    &mut self.report.restore,
                    Stage::Sku,
                    p,
                )?;
                let topics = self.names.sku_inputs().map(String::from);
                let mut task = SkuTask::from_db(
                    db,
                    p,
                    topics,
                    self.layout.order_partitions,
                    self.codec.clone(),
                    &self.config,
                )?;
                if let Some(start) = &self.start_offsets {
                    let at = self.names.sku_inputs().map(|t| start_of(start, t, p));
                    if at.iter().any(|o| *o > 0) && task.start_at(at) {
                        tracing::info!(partition = p, offsets = ?at, "SKU task without state starts at the given offsets");
                    }
                }
                let fetched = std::array::from_fn(|i| task.next_offset(i));
                let counted =
                    std::array::from_fn(|i| Counted::baseline(&task.meta().accounting[i]));
                Ok(v.insert(Slot {
                    task,
                    fetched,
                    processed_since_commit: 0,
                    changelog,
                    counted,
                }))
            }
        }
    }

    /// Revocation: a final commit, then the tasks close (their RocksDB stays on disk). If the
    /// commit fails, the tasks are abandoned instead: nothing uncommitted may reach disk.
    fn close_tasks(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<(), RuntimeError> {
        // Whoever owns the partitions next decides afresh from their last commit.
        self.journals.clear();
        if self.order.is_empty() && self.sku.is_empty() {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.config.runtime.produce_ack_timeout_ms);
        if let Err(e) = self.commit(consumer, timeout) {
            if !self.retriable(&e) {
                self.abandon();
                return Err(e);
            }
            // The batch is the next owner's to process again, from the same last commit.
            self.status.metrics.emit(Occurrence::CommitFailed {
                error: &e.to_string(),
                attempts: self.retry.as_ref().map_or(0, |r| r.attempts) + 1,
                retry_in: Duration::ZERO,
                batch_records: self.batch_records,
            });
            self.drop_batch();
            tracing::info!("partitions revoked; tasks closed without their failed batch");
            return Ok(());
        }
        self.collect_report()?;
        self.close_all();
        tracing::info!("partitions revoked; tasks committed and closed");
        Ok(())
    }

    /// Commits, and survives a commit that failed on the broker's side (see `rewind`).
    fn commit_or_retry(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        ack_timeout: Duration,
    ) -> Result<(), RuntimeError> {
        // A commit with nothing to write proves nothing: the broker may still refuse.
        let had_work = self.dirty;
        let committed = self.commit(consumer, ack_timeout);
        // Done once the reopened tasks commit; while they wait to reopen, there was nothing to
        // commit.
        if committed.is_ok()
            && had_work
            && self.retry.as_ref().is_some_and(|r| r.reopen_at.is_none())
        {
            self.retry = None;
            tracing::info!(
                batch_records = self.batch_records,
                "committed again after failed commits"
            );
            self.status.set_fault(&self.status.retrying, None);
        }
        if committed.is_ok() && had_work {
            let max = self.config.limits.commit_records_max;
            self.set_batch_records((self.batch_records + self.batch_records / 4 + 1).min(max));
        }
        self.or_retry(consumer, committed)
    }

    /// A step of the batch that failed on the broker's side (a record the producer refused
    /// at once, a commit) drops the batch and schedules its retry (see `rewind`), and the
    /// loop goes on; any other error ends the run.
    fn or_retry<T: Default>(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        result: Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        match result {
            Ok(v) => Ok(v),
            Err(e) if self.retriable(&e) => {
                self.rewind(consumer, &e)?;
                Ok(T::default())
            }
            Err(e) => Err(e),
        }
    }

    /// Errors a later attempt can get past: records the broker refused or did not acknowledge
    /// in time, a transaction that failed, a broker that cannot be reached to restore from,
    /// even a producer that librdkafka declared failed for good (the retry opens a new one).
    /// Not: a producer fenced by another instance with this transactional id, which now owns
    /// the partitions; nor the disk, the schemas or the registry.
    fn retriable(&self, e: &RuntimeError) -> bool {
        let fenced = self
            .producer
            .client()
            .fatal_error()
            .is_some_and(|(code, _)| {
                matches!(
                    code,
                    RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
                )
            });
        !fenced
            && matches!(
                e,
                RuntimeError::Client(ClientError::Unacknowledged { .. })
                    | RuntimeError::Client(ClientError::Kafka(_))
                    | RuntimeError::Kafka(_)
                    | RuntimeError::Send { .. }
                    | RuntimeError::Restore(RestoreError::Kafka(_))
            )
    }

    /// A failed commit: nothing of its batch reached RocksDB or the group, but some of its
    /// records may have reached the broker. Retrying only the flush would skip whatever the
    /// broker refused, so the batch is dropped as a crash would drop it: the tasks close
    /// without writing it (an open transaction aborts), their partitions pause, and after a
    /// backoff `reopen_due` opens them again from their last commit, restoring any changelog
    /// tail the failed batch left, exactly as a restart would. The batch is then processed
    /// again and produces the same records, so none is skipped; records that did land repeat
    /// byte for byte. The instance reports not ready until a commit succeeds.
    fn rewind(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        error: &RuntimeError,
    ) -> Result<(), RuntimeError> {
        let attempts = self.retry.as_ref().map_or(0, |r| r.attempts) + 1;
        let runtime = &self.config.runtime;
        let doublings = attempts.saturating_sub(1).min(20);
        let wait_ms = runtime
            .retry_backoff_ms
            .saturating_mul(1 << doublings)
            .min(runtime.retry_backoff_max_ms);
        let retry_in = Duration::from_millis(wait_ms);
        let why = error.to_string();
        let floor = BATCH_RECORDS_MIN.min(self.config.limits.commit_records_max);
        self.set_batch_records((self.batch_records / 2).max(floor));
        self.status.metrics.emit(Occurrence::CommitFailed {
            error: &why,
            attempts,
            retry_in,
            batch_records: self.batch_records,
        });
        // The end of input the dropped batch announced is announced again: reopening the
        // tasks (`open_tasks`) makes the order stage finish once more.
        self.abandon();
        consumer.pause(&consumer.assignment()?)?;
        self.retry = Some(Retry {
            attempts,
            reopen_at: Some(Instant::now() + retry_in),
        });
        let fault = format!("attempt {attempts}, next in {wait_ms} ms: {why}");
        self.status.set_fault(&self.status.retrying, Some(fault));
        Ok(())
    }

    fn set_batch_records(&mut self, records: usize) {
        if records != self.batch_records {
            self.batch_records = records;
            self.status.metrics.set_commit_batch(records);
        }
    }

    /// Reopens the tasks a failed commit closed once their backoff has passed: each partition
    /// seeks to its task's last committed offset and resumes. A reopen that fails for a
    /// retriable reason (the broker is still away) waits out a longer backoff.
    fn reopen_due(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<(), RuntimeError> {
        let due = self
            .retry
            .as_ref()
            .and_then(|r| r.reopen_at)
            .is_some_and(|at| Instant::now() >= at);
        if !due {
            return Ok(());
        }
        let reopened = self.reopen(consumer);
        self.or_retry(consumer, reopened)
    }

    fn reopen(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<(), RuntimeError> {
        let mut tpl = consumer.assignment()?;
        if tpl.count() == 0 {
            // The group took the partitions away while the batch waited (a session lost to the
            // outage): there is nothing to reopen, and seeking nothing is an error. The next
            // assignment opens its tasks from their last commit.
            if let Some(retry) = &mut self.retry {
                retry.reopen_at = None;
            }
            tracing::info!("no partitions to reopen; waiting for the group to assign some");
            return Ok(());
        }
        self.open_tasks(&mut tpl)?;
        consumer.seek_partitions(tpl.clone(), kafka::REQUEST_TIMEOUT)?;
        consumer.resume(&tpl)?;
        tracing::info!(
            attempts = self.retry.as_ref().map_or(0, |r| r.attempts),
            "tasks reopened at their last commit; processing the failed batch again"
        );
        Ok(())
    }

    /// Drops every task without committing, as a crash would: after an error nothing of the
    /// current batch may be committed, not even by the revocation that closing the consumer
    /// triggers (its acknowledgements may be the ones that failed).
    fn abandon(&mut self) {
        // The dropped batch's records are processed again; the report counts each record once.
        let dropped: usize = self.order.values().map(|s| s.processed_since_commit).sum();
        self.report.processed_this_run = self
            .report
            .processed_this_run
            .saturating_sub(dropped as u64);
        if self.transactional {
            let timeout = Duration::from_millis(self.config.runtime.produce_ack_timeout_ms);
            if let Err(e) = self.producer.abort_transaction(timeout) {
                // The broker aborts it anyway when the transaction times out, or fences it
                // when this instance's transactional id starts again.
                tracing::warn!(error = %e, "cannot abort the open transaction");
            }
        }
        // What the dropped attempt decided may already be on the broker: the retry takes the
        // same steps again (`OrderTask::replay`).
        self.journals = self
            .order
            .iter_mut()
            .map(|(p, slot)| (*p, slot.task.take_journal()))
            .filter(|(_, steps)| !steps.is_empty())
            .collect();
        self.close_all();
        self.dirty = false;
        self.stale_producer = true;
    }

    /// Revocation without a commit: the tasks are abandoned and the batch is the next owner's
    /// to process again from the last commit, so this member has nothing left to retry.
    fn drop_batch(&mut self) {
        self.abandon();
        self.journals.clear();
        self.retry = None;
        self.status.set_fault(&self.status.retrying, None);
    }

    /// Closes every task, after its state readers are gone: a query never reads a closed task,
    /// and a task reopened later finds its database unlocked.
    fn close_all(&mut self) {
        self.status.queries.clear();
        self.order.clear();
        self.sku.clear();
        self.paused.clear();
    }

    /// Hands one consumed record to its task; pauses the partition when the task's buffer for
    /// it is full.
    fn push(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        record: Consumed,
    ) -> Result<(), RuntimeError> {
        let Consumed {
            slot,
            partition,
            offset,
            timestamp_ms,
            key,
            value,
        } = record;
        let Ok(p) = u32::try_from(partition) else {
            return Ok(());
        };
        // A Confluent schema id seen for the first time is fetched here, outside the tasks:
        // an unreachable registry stops the run instead of dead-lettering readable records.
        if let Some(v) = &value {
            self.codec.resolve(v)?;
        }
        let topic = self.topic_of(slot).to_string();
        if let Some(ends) = &self.ends {
            // Past the end captured at startup: a later run's input.
            if ends
                .offsets
                .get(&(topic.clone(), partition))
                .is_some_and(|end| offset >= *end)
            {
                return self.pause(consumer, &topic, partition);
            }
        }
        let full = match slot {
            InputSlot::Order(rank) => match self.order.get_mut(&p) {
                Some(s) if offset >= s.fetched[rank] => {
                    s.fetched[rank] = offset + 1;
                    s.task.push(rank, offset, offset, timestamp_ms, key, value);
                    s.task.is_full(rank)
                }
                _ => false,
            },
            InputSlot::Sku(input) => match self.sku.get_mut(&p) {
                Some(s) if offset >= s.fetched[input] => {
                    s.fetched[input] = offset + 1;
                    s.task.push(input, offset, offset, timestamp_ms, key, value);
                    s.task.is_full(input)
                }
                _ => false,
            },
        };
        if full {
            self.pause(consumer, &topic, partition)?;
        }
        Ok(())
    }

    fn topic_of(&self, slot: InputSlot) -> &str {
        match slot {
            InputSlot::Order(rank) => self.names.order_inputs()[rank],
            InputSlot::Sku(input) => self.names.sku_inputs()[input],
        }
    }

    fn pause(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        topic: &str,
        partition: i32,
    ) -> Result<(), RuntimeError> {
        if self.paused.insert((topic.to_string(), partition)) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            consumer.pause(&tpl)?;
        }
        Ok(())
    }

    /// Resumes paused partitions whose task has drained its buffer below half the limit
    /// (never one that reached a bounded run's end).
    fn resume_drained(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
    ) -> Result<(), RuntimeError> {
        let half = self.config.limits.buffer_records_max / 2;
        let mut resume = TopicPartitionList::new();
        let mut resumed = Vec::new();
        for (topic, partition) in &self.paused {
            let at_end = self.ends.as_ref().is_some_and(|e| {
                e.offsets
                    .get(&(topic.clone(), *partition))
                    .is_some_and(|end| self.fetched(topic, *partition) >= *end)
            });
            let Some(buffered) = self.buffered(topic, *partition) else {
                continue;
            };
            if !at_end && buffered <= half {
                resume.add_partition(topic, *partition);
                resumed.push((topic.clone(), *partition));
            }
        }
        if !resumed.is_empty() {
            consumer.resume(&resume)?;
            for r in resumed {
                self.paused.remove(&r);
            }
        }
        Ok(())
    }

    fn buffered(&self, topic: &str, partition: i32) -> Option<usize> {
        let p = u32::try_from(partition).ok()?;
        match self.names.slot(topic)? {
            InputSlot::Order(rank) => self.order.get(&p).map(|s| s.task.buffered(rank)),
            InputSlot::Sku(input) => self.sku.get(&p).map(|s| s.task.buffered(input)),
        }
    }

    fn fetched(&self, topic: &str, partition: i32) -> i64 {
        let Ok(p) = u32::try_from(partition) else {
            return 0;
        };
        match self.names.slot(topic) {
            Some(InputSlot::Order(rank)) => self.order.get(&p).map_or(0, |s| s.fetched[rank]),
            Some(InputSlot::Sku(input)) => self.sku.get(&p).map_or(0, |s| s.fetched[input]),
            None => 0,
        }
    }

    /// True when input `rank` of order task `p` has nothing buffered and nothing more to read
    /// as far as anyone knows: its end offset in a bounded run, or in live mode the end the
    /// broker last reported for it.
    fn caught_up(&self, consumer: &BaseConsumer<GroupContext>, p: u32, rank: usize) -> bool {
        self.order.get(&p).is_some_and(|slot| {
            let topic = self.names.order_inputs()[rank];
            let (buffered, next) = (slot.task.buffered(rank), slot.task.next_offset(rank));
            self.input_caught_up(consumer, topic, p, buffered, next)
        })
    }

    /// True when SKU task `p` has no inventory buffered and nothing more to read as far as
    /// anyone knows (the same rule as `caught_up`).
    fn inventory_caught_up(&self, consumer: &BaseConsumer<GroupContext>, p: u32) -> bool {
        self.sku.get(&p).is_some_and(|slot| {
            let input = sku_stage::INVENTORY;
            let (buffered, next) = (slot.task.buffered(input), slot.task.next_offset(input));
            self.input_caught_up(consumer, &self.names.inventory, p, buffered, next)
        })
    }

    /// The rule of both: nothing buffered, and the partition read to the end of its span (log
    /// start and end offsets: captured at startup in a bounded run, the broker's latest answer
    /// in live mode).
    fn input_caught_up(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        topic: &str,
        p: u32,
        buffered: usize,
        next: i64,
    ) -> bool {
        if buffered > 0 {
            return false;
        }
        let partition = p as i32;
        let span = match &self.ends {
            Some(ends) => {
                let key = (topic.to_string(), partition);
                ends.offsets
                    .get(&key)
                    .map(|end| (ends.starts.get(&key).copied().unwrap_or(0), *end))
            }
            None => self.live_end(consumer, topic, partition, next),
        };
        reached(consumer, topic, partition, next, span)
    }

    /// Live mode: the partition's log start and end offsets as the broker answers a
    /// ListOffsets request, asked again once the task has reached the last answer and that
    /// answer is older than `END_OFFSET_REFRESH`, or, while the task is short of it, older than
    /// `END_OFFSET_STALE` (records deleted under a task that never gets them are noticed).
    /// Not the high watermark of fetch responses: a broker may report one there that is
    /// behind the log's end, and passing over a partition that still has records would
    /// process its records late.
    fn live_end(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        topic: &str,
        partition: i32,
        next: i64,
    ) -> Option<(i64, i64)> {
        let key = (topic.to_string(), partition);
        let mut known = self.live_ends.borrow_mut();
        if let Some((span, at)) = known.get(&key) {
            let short = span.is_some_and(|(_, end)| end > next);
            if at.elapsed() < END_OFFSET_REFRESH || short && at.elapsed() < END_OFFSET_STALE {
                return *span;
            }
        }
        // With the broker away, asking every partition every round would hold the loop for
        // the timeout each time, and with it polling, readiness and the retry of commits.
        if self
            .end_queries_after
            .get()
            .is_some_and(|after| Instant::now() < after)
        {
            return None;
        }
        let span = match consumer.fetch_watermarks(topic, partition, END_OFFSET_TIMEOUT) {
            Ok(span) => Some(span),
            Err(e) => {
                tracing::debug!(topic, partition, error = %e, "end offset query failed");
                self.end_queries_after
                    .set(Some(Instant::now() + END_OFFSET_RETRY));
                None
            }
        };
        known.insert(key, (span, Instant::now()));
        span
    }

    /// One round of processing: every task runs on what it has buffered, up to its share of
    /// the commit batch, and its outputs go to the producer at once. Returns records processed.
    fn run_tasks(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<usize, RuntimeError> {
        let limit = self.batch_records;
        let mut total = 0;
        let mut order_records = 0;
        let mut replayed_work = false;
        let mut out = Vec::new();
        let order_ids: Vec<u32> = self.order.keys().copied().collect();
        let caught_up: Vec<[bool; order_stage::INPUTS]> = order_ids
            .iter()
            .map(|p| std::array::from_fn(|rank| self.caught_up(consumer, *p, rank)))
            .collect();
        // Bounded runs only. In live runs against tansu, aligned order tasks slowed to a few
        // records per commit in the broker fault tests; until that is understood, a live run
        // relies on `pending_commands_max` alone (docs/ARCHITECTURE.md, "Alignment").
        let until = if self.ends.is_some() {
            merge::aligned_until(
                order_ids
                    .iter()
                    .zip(&caught_up)
                    .filter_map(|(p, done)| self.order.get(p)?.task.position(*done)),
                self.config.runtime.watermark_alignment_ms,
            )
        } else {
            Millis::MAX
        };
        for (p, caught_up) in order_ids.into_iter().zip(caught_up) {
            let Some(slot) = self.order.get_mut(&p) else {
                continue;
            };
            let budget = limit.saturating_sub(slot.processed_since_commit);
            let (replaying, sent) = (slot.task.replaying(), out.len());
            let n = slot.task.run(caught_up, budget, until, &mut out)?;
            // A dropped attempt's advance, taken again, fired timers: that is work to commit.
            replayed_work |= replaying && out.len() > sent;
            slot.processed_since_commit += n;
            total += n;
            order_records += n as u64;
            if n > 0 {
                let accounting = &slot.task.meta().accounting;
                for (rank, topic) in self.names.order_inputs().into_iter().enumerate() {
                    slot.counted[rank].emit(&self.status.metrics, topic, &accounting[rank]);
                }
            }
        }
        if let Some(interval) = self.watermark_interval {
            if self.last_watermarks.elapsed() >= interval {
                for slot in self.order.values_mut() {
                    slot.task.publish_watermark(&mut out)?;
                }
                self.last_watermarks = Instant::now();
            }
        }
        let mut sku_records = 0;
        let sku_ids: Vec<u32> = self.sku.keys().copied().collect();
        for p in sku_ids {
            let inventory_caught_up = self.inventory_caught_up(consumer, p);
            let Some(slot) = self.sku.get_mut(&p) else {
                continue;
            };
            let budget = limit.saturating_sub(slot.processed_since_commit);
            let n = slot.task.run(inventory_caught_up, budget, &mut out)?;
            slot.processed_since_commit += n;
            total += n;
            sku_records += n as u64;
            if n > 0 {
                let accounting = &slot.task.meta().accounting;
                for (input, topic) in self.names.sku_inputs().into_iter().enumerate() {
                    slot.counted[input].emit(&self.status.metrics, topic, &accounting[input]);
                }
            }
        }
        // One round's outputs, at most `batch_records` per task, go out together.
        let sent = !out.is_empty();
        self.produce(&mut out)?;
        // Watermarks alone (an idle instance's every second) leave nothing to commit, except
        // under `exactly_once` (what was sent stays invisible until its transaction commits)
        // and once a SKU task has read a whole batch of them: a reopened task reads again
        // what it read since its last commit, and that must stay bounded.
        if order_records > 0
            || replayed_work
            || self
                .sku
                .values()
                .any(|s| s.task.changed_since_commit() || s.processed_since_commit >= limit)
            || (self.transactional && sent)
        {
            self.dirty = true;
        }
        if total > 0 {
            self.status
                .order_records
                .fetch_add(order_records, Ordering::Relaxed);
            self.status
                .sku_records
                .fetch_add(sku_records, Ordering::Relaxed);
            self.report.processed_this_run += order_records;
        }
        self.producer.poll(Duration::ZERO);
        Ok(total)
    }

    /// Says, per order-task input, where it is and what it waits for: logged when a run has
    /// made no progress for a while, so a stall names its partition.
    fn log_waiting(&self) {
        for (p, slot) in &self.order {
            for (rank, topic) in self.names.order_inputs().iter().enumerate() {
                let end = match &self.ends {
                    Some(e) => e.offsets.get(&(topic.to_string(), *p as i32)).copied(),
                    None => self
                        .live_ends
                        .borrow()
                        .get(&(topic.to_string(), *p as i32))
                        .and_then(|(span, _)| span.map(|(_, end)| end)),
                };
                tracing::info!(
                    topic,
                    partition = p,
                    next_offset = slot.task.next_offset(rank),
                    fetched = slot.fetched[rank],
                    buffered = slot.task.buffered(rank),
                    ?end,
                    paused = self.paused.contains(&(topic.to_string(), *p as i32)),
                    "no progress; order task input"
                );
            }
        }
    }

    fn commit_due(&self) -> bool {
        let limit = self.batch_records;
        self.order
            .values()
            .any(|s| s.processed_since_commit >= limit)
            || self.sku.values().any(|s| s.processed_since_commit >= limit)
            || self.last_commit.elapsed()
                >= Duration::from_millis(self.config.runtime.commit_interval_ms)
    }

    /// Hands records to the producer without waiting for acknowledgements; the commit waits.
    /// A record the producer refuses as too large goes out as its stub (`too_large_stub`).
    fn produce(&self, out: &mut Vec<OutRecord>) -> Result<(), RuntimeError> {
        let mut stubs = Vec::new();
        self.produce_or_stub(out, Some(&mut stubs))?;
        // A stub is small; one refused too is an error like any other.
        self.produce_or_stub(&mut stubs, None)
    }

    fn produce_or_stub(
        &self,
        out: &mut Vec<OutRecord>,
        mut stubs: Option<&mut Vec<OutRecord>>,
    ) -> Result<(), RuntimeError> {
        let (names, partitions) = (&self.names, &self.partitions);
        for r in out.drain(..) {
            let topic: &str = match r.topic {
                OutTopic::ReservationExpiry => &names.reservation_expiry,
                OutTopic::TrackingStatus => &names.tracking_status,
                OutTopic::OversellAlerts => &names.oversell_alerts,
                OutTopic::SkuCommands => &names.sku_commands,
                OutTopic::DeadLetters => &names.dead_letters,
            };
            let sent = match r.topic {
                OutTopic::ReservationExpiry => Sent::Expiry,
                OutTopic::TrackingStatus => Sent::Tracking,
                OutTopic::OversellAlerts => r.alert.map_or(Sent::Other, Sent::Alert),
                OutTopic::SkuCommands => Sent::Command,
                OutTopic::DeadLetters => Sent::DeadLetter,
            };
            let opaque = metrics::delivery_opaque(sent, r.cause_time);
            let targets: Vec<Option<i32>> = match r.route {
                Route::ByKey => vec![None],
                // The source's partition, folded onto the topic's: the dead-letter topic
                // usually has one partition, whatever its sources have.
                Route::Partition(p) => {
                    let count = partitions.get(topic).copied().unwrap_or(1).max(1);
                    vec![Some((p % count) as i32)]
                }
                Route::EveryPartition => (0..partitions.get(topic).copied().unwrap_or(1))
                    .map(|p| Some(p as i32))
                    .collect(),
            };
            for partition in targets {
                let mut record: BaseRecord<[u8], [u8], usize> =
                    BaseRecord::with_opaque_to(topic, opaque);
                record.key = r.key.as_deref();
                record.payload = r.value.as_deref();
                record.partition = partition;
                record.headers = kafka::owned_headers(&r.headers);
                match (
                    send(&self.producer, record, self.queue_wait),
                    stubs.as_deref_mut(),
                ) {
                    (Err(e), Some(stubs)) if too_large(&e) => {
                        let bytes = r.key.as_ref().map_or(0, Vec::len)
                            + r.value.as_ref().map_or(0, Vec::len);
                        let kept = self.config.limits.dead_letter_bytes_max;
                        let key = r.key.as_deref();
                        stubs.push(too_large_stub(topic, partition, key, bytes, kept));
                    }
                    (sent, _) => sent?,
                }
            }
        }
        Ok(())
    }

    /// Live mode: an order task that is idle and caught up on every input moves its stream
    /// time to the wall clock, so reservations expire and the SKU stage's watermark advances
    /// while no orders come in.
    fn advance_idle(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<(), RuntimeError> {
        if !self.wall_clock_advance {
            return Ok(());
        }
        let now = now_ms();
        let ids: Vec<u32> = self.order.keys().copied().collect();
        let mut out = Vec::new();
        for p in ids {
            let idle = (0..order_stage::INPUTS).all(|rank| self.caught_up(consumer, p, rank));
            let Some(slot) = self.order.get_mut(&p) else {
                continue;
            };
            // A task taking a dropped attempt's steps again advances where that attempt did.
            if idle
                && slot.processed_since_commit == 0
                && !slot.task.replaying()
                && slot.task.meta().stream_time < now
            {
                let fired = out.len();
                slot.task.advance_to(now, &mut out)?;
                if out.len() > fired || self.transactional {
                    self.dirty = true;
                } else {
                    // Nothing was due: only the watermark moves, and it goes out without a
                    // commit. An idle instance writes no checkpoint; a restart before the next
                    // commit advances again from the committed stream time. (Under
                    // `exactly_once` the watermark is seen only once its transaction commits.)
                    slot.task.publish_watermark(&mut out)?;
                }
            }
        }
        self.produce(&mut out)
    }

    /// A bounded run's end of the order stage: once every order task has read its inputs to
    /// the captured end, each is advanced to E (the latest valid event time of all inputs,
    /// inventory included) and marks end of input, which its next watermark tells the SKU
    /// stage.
    fn finish_order_stage(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
    ) -> Result<bool, RuntimeError> {
        let Some(ends) = &self.ends else {
            return Ok(false);
        };
        if ends.order_finished || self.order.len() as u32 != self.layout.order_partitions {
            return Ok(false);
        }
        let ids: Vec<u32> = self.order.keys().copied().collect();
        for p in &ids {
            if !(0..order_stage::INPUTS).all(|rank| self.caught_up(consumer, *p, rank)) {
                return Ok(false);
            }
        }
        let end = self
            .order
            .values()
            .map(|s| s.task.meta().stream_time)
            .fold(ends.inventory_max, Millis::max);
        let mut out = Vec::new();
        for slot in self.order.values_mut() {
            slot.task.finish(end, &mut out)?;
        }
        self.produce(&mut out)?;
        self.dirty = true;
        if let Some(ends) = &mut self.ends {
            ends.order_finished = true;
        }
        tracing::info!(end_of_input = end, "order stage at end of input");
        Ok(true)
    }

    /// A bounded run is over when the order stage has finished and every SKU task has heard
    /// end of input from every order partition, applied every command and read its inventory.
    fn bounded_done(&self, consumer: &BaseConsumer<GroupContext>) -> bool {
        let Some(ends) = &self.ends else {
            return false;
        };
        ends.order_finished
            && self.sku.len() as u32 == self.layout.sku_partitions
            && self.sku.iter().all(|(p, s)| {
                let t = &s.task;
                t.watermark() == Millis::MAX
                    && t.pending_commands() == 0
                    && !t.rebuilding()
                    && t.buffered(sku_stage::COMMANDS) == 0
                    && self.inventory_caught_up(consumer, *p)
            })
    }

    /// The commit protocol, written once. Outputs are handed to the producer as tasks create
    /// them; a commit makes the batch durable in this order:
    ///
    /// 1. Each order task drops expired dedup ids and adds its watermark record behind its
    ///    commands; each SKU task drops expired dedup ids.
    /// 2. With changelogs, each task's writes of the batch go to its changelog partitions,
    ///    after the current values of any keys its restore found in an unfinished batch.
    /// 3. Wait until the broker has acknowledged every record produced since the last commit.
    ///    If any was refused or the wait times out, stop here: nothing is committed, and the
    ///    batch is processed again after a restart (outputs may repeat, byte-identical).
    /// 4. With changelogs, each task's checkpoint record closes the batch: its bookkeeping
    ///    (input offsets included) and the offsets its changelogs end at, which step 3's
    ///    acknowledgements tell. Wait for its acknowledgement too: from here on a restore
    ///    applies this batch, and before it none of it.
    /// 5. Each task writes its state changes, input offsets and changelog positions in one
    ///    atomic RocksDB WriteBatch. This, not the group, is where a task resumes.
    /// 6. Commit the same offsets to the consumer group, asynchronously, so lag is visible.
    ///
    /// Under `exactly_once` every record above belongs to the open transaction, so steps 3
    /// and 4 only learn offsets and nothing is visible to `read_committed` readers yet. Between
    /// 4 and 5 the input offsets are sent to the transaction with the group's metadata and the
    /// transaction commits: outputs, commands, changelogs and offsets together, or none of
    /// them. Step 5 follows (a crash before it leaves local state one batch behind its
    /// changelog, which the restart restores), step 6 is the transaction's offsets, and a new
    /// transaction begins.
    fn commit(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        ack_timeout: Duration,
    ) -> Result<(), RuntimeError> {
        if !self.dirty {
            self.last_commit = Instant::now();
            self.update_gauges();
            return Ok(());
        }
        let started = Instant::now();
        // 1.
        let mut out = Vec::new();
        for slot in self.order.values_mut() {
            slot.task.prepare_commit(&mut out)?;
            slot.task.stage_meta()?;
        }
        for slot in self.sku.values_mut() {
            slot.task.prepare_commit()?;
            slot.task.stage_meta()?;
        }
        self.produce(&mut out)?;
        // 2.
        let (producer, names) = (&self.producer, &self.names);
        let to = Changelog {
            producer,
            wait: self.queue_wait,
            names,
            kept: self.config.limits.dead_letter_bytes_max,
        };
        let mut stubs = Vec::new();
        each_changelog(&mut self.order, &mut self.sku, |stage, p, db, cl| {
            send_changelog(&to, stage, p, db, cl, &mut stubs)
        })?;
        self.produce(&mut stubs)?;
        // 3.
        let flush_started = Instant::now();
        producer.flush(ack_timeout)?;
        producer.context().take_failures()?;
        // 4.
        if self.config.state.changelog {
            let acked = producer.context().ends();
            each_changelog(&mut self.order, &mut self.sku, |stage, p, db, cl| {
                send_checkpoint(&to, stage, p, db, cl, &acked)
            })?;
            producer.flush(ack_timeout)?;
            producer.context().take_failures()?;
            let acked = producer.context().ends();
            each_changelog(&mut self.order, &mut self.sku, |stage, p, db, cl| {
                stage_positions(names, stage, p, db, cl, &acked)
            })?;
        }
        let offsets = self.input_offsets()?;
        if self.transactional {
            let group = consumer
                .group_metadata()
                .ok_or(RuntimeError::NoGroupMetadata)?;
            self.producer
                .send_offsets_to_transaction(&offsets, &group, ack_timeout)?;
            self.producer.commit_transaction(ack_timeout)?;
        }
        let flush = flush_started.elapsed();
        let write_started = Instant::now();
        // 5.
        for slot in self.order.values_mut() {
            slot.task.commit()?;
            slot.processed_since_commit = 0;
        }
        for slot in self.sku.values_mut() {
            slot.task.commit()?;
            slot.processed_since_commit = 0;
        }
        let write = write_started.elapsed();
        // 6.
        if self.transactional {
            self.producer.begin_transaction()?;
        } else if offsets.count() > 0 {
            if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
                // Lag reporting only: the state already holds the offsets.
                tracing::debug!(error = %e, "group offset commit failed");
            }
        }
        self.dirty = false;
        self.last_commit = Instant::now();
        self.status.metrics.emit(Occurrence::Committed {
            duration: started.elapsed(),
            flush,
            write,
            processed: self.report.processed_this_run,
        });
        self.update_gauges();
        Ok(())
    }

    /// Sets the gauges that describe the tasks (stream time per stage, active reservations),
    /// at most once per second: counting reservations walks each task's timer index.
    fn update_gauges(&mut self) {
        if self
            .last_gauges
            .is_some_and(|at| at.elapsed() < GAUGE_INTERVAL)
        {
            return;
        }
        self.last_gauges = Some(Instant::now());
        let metrics = &self.status.metrics;
        let known = |t: Millis| (t != Millis::MIN).then_some(t);
        let order_time = self
            .order
            .values()
            .filter_map(|s| known(s.task.meta().stream_time))
            .min();
        let sku_time = self
            .sku
            .values()
            .filter_map(|s| known(s.task.meta().stream_time))
            .min();
        metrics.set_stream_time("order", order_time);
        metrics.set_stream_time("sku", sku_time);
        let mut parked: Vec<(&str, u64)> = Vec::new();
        for (rank, topic) in self.names.order_inputs().into_iter().enumerate() {
            let n = self
                .order
                .values()
                .map(|s| s.task.meta().accounting[rank].parked);
            parked.push((topic, n.sum()));
        }
        for (input, topic) in self.names.sku_inputs().into_iter().enumerate() {
            let n = self
                .sku
                .values()
                .map(|s| s.task.meta().accounting[input].parked);
            parked.push((topic, n.sum()));
        }
        metrics.set_parked(&parked);
        metrics.set_active_reservations(
            self.order
                .values()
                .map(|s| s.task.active_reservations())
                .sum(),
        );
    }

    /// Every task's next input offsets, as the group stores them.
    fn input_offsets(&self) -> Result<TopicPartitionList, RuntimeError> {
        let mut offsets = TopicPartitionList::new();
        for (p, slot) in &self.order {
            for (rank, topic) in self.names.order_inputs().iter().enumerate() {
                let next = Offset::Offset(slot.task.next_offset(rank));
                offsets.add_partition_offset(topic, *p as i32, next)?;
            }
        }
        for (p, slot) in &self.sku {
            for (input, topic) in self.names.sku_inputs().iter().enumerate() {
                let next = Offset::Offset(slot.task.next_offset(input));
                offsets.add_partition_offset(topic, *p as i32, next)?;
            }
        }
        Ok(offsets)
    }

    fn collect_report(&mut self) -> Result<(), RuntimeError> {
        let names = self.names.clone();
        let mut r = RunReport {
            processed_this_run: self.report.processed_this_run,
            restore: self.report.restore.clone(),
            ..RunReport::default()
        };
        for slot in self.order.values() {
            let m = slot.task.meta();
            for (rank, topic) in names.order_inputs().iter().enumerate() {
                r.accounting
                    .entry(topic.to_string())
                    .or_default()
                    .merge(&m.accounting[rank]);
            }
            r.expiries += m.expiries;
            r.tracking_updates += m.tracking_updates;
            r.commands += m.commands;
        }
        for slot in self.sku.values() {
            let m = slot.task.meta();
            for (input, topic) in names.sku_inputs().iter().enumerate() {
                r.accounting
                    .entry(topic.to_string())
                    .or_default()
                    .merge(&m.accounting[input]);
            }
            for (k, v) in &m.alerts {
                *r.alerts.entry(k.clone()).or_default() += v;
            }
            r.late_commands += m.late_commands;
            r.forced_commands += m.forced_commands;
            if self.ends.is_some() {
                r.reservations += slot.task.reservation_count()?;
            }
        }
        if !self.order.is_empty() || !self.sku.is_empty() {
            self.report = r;
        }
        Ok(())
    }
}

/// This instance's transactional id: the configured one, or `<application_id>-<instance id>`
/// with an instance id created once in the state directory, so that a restart on the same
/// disk fences its own zombie and two instances never fence each other.
fn transactional_id(config: &Config, state_root: &std::path::Path) -> Result<String, RuntimeError> {
    if !config.kafka.transactional_id.is_empty() {
        return Ok(config.kafka.transactional_id.clone());
    }
    let io = |e: std::io::Error| ClientError::Io(format!("{}: {e}", state_root.display()));
    std::fs::create_dir_all(state_root).map_err(io)?;
    let file = state_root.join("instance-id");
    let id = match std::fs::read_to_string(&file) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            // Unique enough for an instance: the disk's path, the process and the instant.
            let seed = format!(
                "{}/{}/{:?}",
                state_root.display(),
                std::process::id(),
                SystemTime::now()
            );
            let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes())
                .simple()
                .to_string();
            std::fs::write(&file, &id).map_err(io)?;
            id
        }
    };
    Ok(format!("{}-{id}", config.kafka.application_id))
}

/// The group's committed offsets of the inputs, if it has any.
fn group_offsets(
    config: &Config,
    names: &TopicNames,
) -> Result<Option<kafka::EndOffsets>, RuntimeError> {
    let consumer: BaseConsumer = kafka::client_config(config)
        .set("group.id", &config.kafka.application_id)
        .set("enable.auto.commit", "false")
        .create()?;
    let counts = kafka::partition_counts(config, &names.inputs())?;
    let mut tpl = TopicPartitionList::new();
    for (topic, n) in &counts {
        for p in 0..*n as i32 {
            tpl.add_partition(topic, p);
        }
    }
    let committed = consumer.committed_offsets(tpl, kafka::REQUEST_TIMEOUT)?;
    let found: kafka::EndOffsets = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o > 0 => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect();
    if !found.is_empty() {
        tracing::info!(
            partitions = found.len(),
            ?found,
            "tasks without state start at the group's committed offsets"
        );
    }
    Ok((!found.is_empty()).then_some(found))
}

/// A partition's start in `start` (0 where it names none).
fn start_of(start: &kafka::EndOffsets, topic: &str, p: u32) -> i64 {
    start
        .get(&(topic.to_string(), p as i32))
        .copied()
        .unwrap_or(0)
}

/// Opens a task's RocksDB and, with changelogs on, restores what it is missing before the task
/// sees a record. The instance reports not ready meanwhile.
fn open_db(
    config: &Config,
    state_root: &std::path::Path,
    status: &Status,
    report: &mut RestoreReport,
    stage: Stage,
    p: u32,
) -> Result<(TaskDb, Option<TaskChangelog>), RuntimeError> {
    let dir = state_root.join(format!("{}-{p}", stage.name()));
    let mut db = TaskDb::open(&dir, stage.stores(), &StateOptions::from_config(config))?;
    if !config.state.changelog {
        status.queries.add(stage, p, db.reader());
        return Ok((db, None));
    }
    let started = Instant::now();
    if status.restoring_tasks.fetch_add(1, Ordering::AcqRel) == 0 {
        tracing::info!("not ready: restoring tasks");
    }
    status.set_ready();
    let last_log = std::cell::Cell::new(Instant::now());
    let last_applied = std::cell::Cell::new(0);
    let restored = changelog::restore(
        config,
        stage,
        p,
        &mut db,
        &|applied: u64, remaining: u64| {
            status.restore_remaining.store(remaining, Ordering::Relaxed);
            status.metrics.emit(Occurrence::Restoring {
                applied: applied.saturating_sub(last_applied.replace(applied)),
                remaining,
            });
            // A restore runs inside the rebalance callback: it is the loop's work for now.
            status.beat();
            if last_log.get().elapsed() >= RESTORE_LOG_INTERVAL {
                last_log.set(Instant::now());
                tracing::info!(
                    stage = stage.name(),
                    partition = p,
                    applied,
                    remaining,
                    "restoring"
                );
            }
        },
    );
    if status.restoring_tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
        tracing::info!("ready: every assigned task is restored");
    }
    status.set_ready();
    let restored = restored?;
    status.metrics.emit(Occurrence::Restoring {
        applied: restored.applied.saturating_sub(last_applied.get()),
        remaining: 0,
    });
    status.queries.add(stage, p, db.reader());
    status
        .restore_applied
        .fetch_add(restored.applied, Ordering::Relaxed);
    let elapsed = started.elapsed();
    report.tasks += 1;
    report.applied += restored.applied;
    report.tail += restored.tail;
    report.elapsed += elapsed;
    tracing::info!(
        stage = stage.name(),
        partition = p,
        applied = restored.applied,
        unfinished_tail = restored.tail,
        cleared_for_reset = restored.cleared,
        ms = elapsed.as_millis() as u64,
        "task restored"
    );
    Ok((
        db,
        Some(TaskChangelog {
            ends: restored.ends,
            repair: restored.repair,
            base: restored.base,
        }),
    ))
}

/// Calls `f` for every open task that keeps a changelog, order tasks first.
fn each_changelog(
    order: &mut BTreeMap<u32, Slot<OrderTask, { order_stage::INPUTS }>>,
    sku: &mut BTreeMap<u32, Slot<SkuTask, { sku_stage::INPUTS }>>,
    mut f: impl FnMut(Stage, u32, &mut TaskDb, &mut TaskChangelog) -> Result<(), RuntimeError>,
) -> Result<(), RuntimeError> {
    for (p, slot) in order {
        if let Some(cl) = &mut slot.changelog {
            f(Stage::Order, *p, slot.task.state_mut(), cl)?;
        }
    }
    for (p, slot) in sku {
        if let Some(cl) = &mut slot.changelog {
            f(Stage::Sku, *p, slot.task.state_mut(), cl)?;
        }
    }
    Ok(())
}

/// What commit steps 2 and 4 write with: the producer, how long a full queue may hold a
/// record, the topic names, and how much of a key a `too_large` stub keeps.
struct Changelog<'a> {
    producer: &'a BaseProducer<Acks>,
    wait: Duration,
    names: &'a TopicNames,
    kept: usize,
}

/// Commit step 2 for one task: the repair of an unfinished tail, then the batch's writes. A
/// record the producer refuses as too large is not mirrored: its stub joins `stubs`.
fn send_changelog(
    to: &Changelog<'_>,
    stage: Stage,
    p: u32,
    db: &TaskDb,
    cl: &mut TaskChangelog,
    stubs: &mut Vec<OutRecord>,
) -> Result<(), RuntimeError> {
    let partition = p as i32;
    for (store, key) in std::mem::take(&mut cl.repair) {
        let value = db.get_raw(store, &key)?;
        let topic = to.names.changelog(stage, store);
        send_changelog_record(to, topic, partition, &key, value.as_deref(), stubs)?;
    }
    for (store, topic) in to.names.changelogs(stage) {
        // The meta store travels in the checkpoint record.
        if *store == Store::Meta {
            continue;
        }
        for (key, value) in db.changes(*store) {
            send_changelog_record(to, topic, partition, key, value, stubs)?;
        }
    }
    Ok(())
}

fn send_changelog_record(
    to: &Changelog<'_>,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: Option<&[u8]>,
    stubs: &mut Vec<OutRecord>,
) -> Result<(), RuntimeError> {
    let value = changelog::encode_value(value);
    let mut record: BaseRecord<[u8], [u8], usize> = BaseRecord::with_opaque_to(topic, 0);
    record.key = Some(key);
    record.payload = value.as_deref();
    record.partition = Some(partition);
    match send(to.producer, record, to.wait) {
        Err(e) if too_large(&e) => {
            let bytes = key.len() + value.as_ref().map_or(0, Vec::len);
            let stub = too_large_stub(topic, Some(partition), Some(key), bytes, to.kept);
            tracing::warn!(
                topic,
                partition,
                bytes,
                "a state value is too large for its changelog: not mirrored, so a restore \
                 elsewhere has its previous value"
            );
            stubs.push(stub);
            Ok(())
        }
        sent => sent,
    }
}

/// Whether the producer refused a record at once as larger than its `message.max.bytes`.
fn too_large(e: &RuntimeError) -> bool {
    matches!(
        e,
        RuntimeError::Send {
            error: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            ..
        }
    )
}

/// The dead letter that stands for a record the producer refuses as larger than its
/// `message.max.bytes`. Refused the same way on every retry, the record would hold its batch,
/// and the instance, for good. Reason `validation` (the contract's four reasons stay the only
/// ones) with header `stub` = `too_large`; headers `topic` and `partition` say where it was
/// going, `record_bytes` how big it was, and the detail both; the key is kept (cut to
/// `dead_letter_bytes_max`), the value is not. The same record makes the same stub on a retry.
fn too_large_stub(
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    bytes: usize,
    kept_bytes_max: usize,
) -> OutRecord {
    let origin = Origin {
        topic: topic.to_string(),
        partition: partition.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        offset: -1,
    };
    let detail = format!(
        "a record of {bytes} bytes for {topic} is larger than the producer's message.max.bytes; \
         not written"
    );
    let mut stub = sink::dead_letter(
        DeadLetterReason::Validation,
        &detail,
        &origin,
        key.map(<[u8]>::to_vec),
        None,
        kept_bytes_max,
    );
    stub.headers.extend([
        ("stub".into(), b"too_large".to_vec()),
        ("record_bytes".into(), bytes.to_string().into_bytes()),
    ]);
    stub
}

/// Commit step 4 for one task: its checkpoint record, with each changelog's end offset (the
/// larger of what the task knew and what the acknowledgements prove).
fn send_checkpoint(
    to: &Changelog<'_>,
    stage: Stage,
    p: u32,
    db: &TaskDb,
    cl: &mut TaskChangelog,
    acked: &kafka::EndOffsets,
) -> Result<(), RuntimeError> {
    let partition = p as i32;
    let mut ends = BTreeMap::new();
    for (store, topic) in to.names.changelogs(stage) {
        if *store == Store::Meta {
            continue;
        }
        let end = cl.ends.entry(*store).or_default();
        if let Some(a) = acked.get(&(topic.clone(), partition)) {
            *end = (*end).max(*a);
        }
        ends.insert(stage.store_name(*store), *end);
    }
    let checkpoint = Checkpoint {
        ends,
        meta: changelog::meta_entries(db),
        base: cl.base.clone(),
    };
    let value = postcard::to_stdvec(&checkpoint).map_err(StateError::Encode)?;
    let mut record: BaseRecord<[u8], [u8], usize> =
        BaseRecord::with_opaque_to(to.names.changelog(stage, Store::Meta), 0);
    record.key = Some(changelog::CHECKPOINT_KEY);
    record.payload = Some(&value);
    record.partition = Some(partition);
    send(to.producer, record, to.wait)
}

/// Whether a partition has been read to the end of `span` (its log start and end offsets):
/// the task's next offset is there, or the consumer's position is, or the log starts there.
/// Offsets no task ever receives would otherwise keep it waiting forever: the position moves
/// past transaction markers and aborted records (with nothing buffered, everything before it
/// was processed), and records deleted by retention before anyone read them are gone.
fn reached(
    consumer: &BaseConsumer<GroupContext>,
    topic: &str,
    partition: i32,
    next: i64,
    span: Option<(i64, i64)>,
) -> bool {
    at_end(next, || position(consumer, topic, partition), span)
}

/// The rule of `reached`, given the task's next offset, the consumer's position (asked only
/// when the offsets alone do not settle it) and the partition's span.
fn at_end(next: i64, position: impl FnOnce() -> Option<i64>, span: Option<(i64, i64)>) -> bool {
    let Some((start, end)) = span else {
        return false;
    };
    next.max(start) >= end || position().is_some_and(|at| at >= end)
}

/// The consumer's position in one partition: the offset after the last record it handed out,
/// past any transaction marker behind it.
fn position(consumer: &BaseConsumer<GroupContext>, topic: &str, partition: i32) -> Option<i64> {
    let list = consumer.position().ok()?;
    match list.find_partition(topic, partition)?.offset() {
        Offset::Offset(at) => Some(at),
        _ => None,
    }
}

/// Commit step 5's changelog part for one task: the positions its checkpoint reached.
fn stage_positions(
    names: &TopicNames,
    stage: Stage,
    p: u32,
    db: &mut TaskDb,
    cl: &mut TaskChangelog,
    acked: &kafka::EndOffsets,
) -> Result<(), RuntimeError> {
    let checkpoint_topic = names.changelog(stage, Store::Meta);
    let acked_end = acked
        .get(&(checkpoint_topic.to_string(), p as i32))
        .copied();
    let end = cl.ends.entry(Store::Meta).or_default();
    *end = (*end).max(acked_end.unwrap_or(*end));
    let end = *end;
    let positions = Positions {
        ends: cl
            .ends
            .iter()
            .filter(|(s, _)| **s != Store::Meta)
            .map(|(s, e)| (stage.store_name(*s), *e))
            .collect(),
        checkpoint: end,
        base: cl.base.clone(),
    };
    Ok(changelog::stage_positions(db, &positions)?)
}

/// Hands one record to librdkafka, serving delivery reports while its queue is full, for at
/// most `wait`: a queue still full after it (an outage; it frees only as records time out)
/// fails the send, which drops the batch for a retry (`Engine::or_retry`).
fn send(
    producer: &BaseProducer<Acks>,
    mut record: BaseRecord<'_, [u8], [u8], usize>,
    wait: Duration,
) -> Result<(), RuntimeError> {
    let give_up = Instant::now() + wait;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                if Instant::now() < give_up =>
            {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((error, r)) => {
                return Err(RuntimeError::Send {
                    topic: r.topic.to_string(),
                    partition: r.partition,
                    error,
                })
            }
        }
    }
}

/// The producer of every output, command, changelog and checkpoint record. Under
/// `exactly_once` it is transactional, with a transaction begun.
fn open_producer(
    config: &Config,
    state_root: &std::path::Path,
    metrics: &Arc<Metrics>,
    transactional: bool,
) -> Result<BaseProducer<Acks>, RuntimeError> {
    let mut producer_config = kafka::producer_config(config);
    if transactional {
        let id = transactional_id(config, state_root)?;
        tracing::info!(transactional_id = %id, "exactly_once: transactional producer");
        producer_config.set("transactional.id", id);
    }
    // The acknowledgements' offsets tell each checkpoint where its batch ends.
    let producer: BaseProducer<Acks> =
        producer_config.create_with_context(Acks::observed(metrics.clone()))?;
    if transactional {
        // Fences any earlier producer with this id (a zombie of this instance, or this
        // process's own producer before a failed commit) and aborts whatever transaction it
        // left open.
        producer.init_transactions(kafka::REQUEST_TIMEOUT)?;
        producer.begin_transaction()?;
    }
    Ok(producer)
}

/// The consumer's own settings: a group member that never commits on its own (the commit
/// protocol does) and gets co-partitioned inputs together (range assignment gives partition p
/// of every topic with the same partition count to the same member).
fn consumer_config(config: &Config) -> rdkafka::ClientConfig {
    let mut c = kafka::client_config(config);
    c.set("group.id", &config.kafka.application_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("enable.partition.eof", "false");
    if config.metrics.enabled {
        // The statistics carry each partition's high watermark: the consumer-lag gauge.
        c.set(
            "statistics.interval.ms",
            config.metrics.lag_interval_ms.to_string(),
        );
    }
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// Captures a bounded run's end: every input partition's end offset now, and the latest valid
/// inventory time up to it.
fn capture_ends(
    config: &Config,
    names: &TopicNames,
    codec: &Codec,
    known: Option<&kafka::EndOffsets>,
    start: Option<&kafka::EndOffsets>,
) -> Result<Ends, RuntimeError> {
    let consumer: BaseConsumer = kafka::client_config(config).create()?;
    let bounds = crate::validate::Bounds::from_config(config);
    let mut offsets = BTreeMap::new();
    let mut starts = BTreeMap::new();
    let counts = kafka::partition_counts(config, &names.inputs())?;
    // The command topic has no end: this run writes it. The SKU stage is done when every
    // order partition's end-of-input watermark has arrived instead.
    for topic in names.external_inputs() {
        for p in 0..counts.get(topic).copied().unwrap_or(0) {
            let key = (topic.to_string(), p as i32);
            let (start, end) = match known.map(|k| k.get(&key).copied().unwrap_or(0)) {
                Some(end) => (0, end),
                None => consumer.fetch_watermarks(topic, p as i32, kafka::REQUEST_TIMEOUT)?,
            };
            starts.insert(key.clone(), start);
            offsets.insert(key, end);
        }
    }
    let mut inventory_max = Millis::MIN;
    kafka::scan_until(config, &names.inventory, Some(&offsets), |r| {
        let within = offsets
            .get(&(names.inventory.clone(), r.partition))
            .is_some_and(|end| r.offset < *end)
            && start.is_none_or(|s| r.offset >= start_of(s, &names.inventory, r.partition as u32));
        if !within {
            return;
        }
        if let Ok(e) = sku_stage::decode_inventory(
            codec,
            &bounds,
            r.key.as_deref(),
            r.value.as_deref(),
            r.timestamp_ms,
        ) {
            inventory_max = inventory_max.max(e.occurred_at);
        }
    })?;
    Ok(Ends {
        offsets,
        starts,
        inventory_max,
        order_finished: false,
    })
}

/// How long a live run trusts the end offset the broker reported for a partition it has
/// caught up with before asking again.
const END_OFFSET_REFRESH: Duration = Duration::from_millis(200);
/// How long a task short of a partition's last known end trusts that answer.
const END_OFFSET_STALE: Duration = Duration::from_secs(5);
/// How long that question may take: a broker that is up answers in milliseconds.
const END_OFFSET_TIMEOUT: Duration = Duration::from_secs(1);
/// How long no partition's end is asked after a question failed.
const END_OFFSET_RETRY: Duration = Duration::from_secs(5);

/// How often the task gauges are set at most.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a long restore logs its progress.
const RESTORE_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// How long a run may see no records and make no progress before it logs what it waits for.
const STALL_REPORT: Duration = Duration::from_secs(30);

/// Runs one group member until `shutdown` is requested or, in `Mode::UntilEnd`, until the
/// input captured at startup is processed. Refuses to start on a topic layout whose
/// co-partitioned topics disagree.
pub fn run(
    config: &Config,
    mode: Mode,
    shutdown: Shutdown,
    status: Arc<Status>,
) -> Result<RunReport, RuntimeError> {
    run_from(config, mode, None, shutdown, status)
}

/// `run`, with tasks that have processed nothing (no local state, no checkpoint in their
/// changelog) starting their inputs at `start` (a replay from a timestamp or an offsets file;
/// partitions it does not name start at 0). Without `start`, such tasks start at the group's
/// committed offsets where there are any (after `orderfold reset`, or another tool's), else at
/// the beginning.
pub fn run_from(
    config: &Config,
    mode: Mode,
    start: Option<kafka::EndOffsets>,
    shutdown: Shutdown,
    status: Arc<Status>,
) -> Result<RunReport, RuntimeError> {
    let started = Instant::now();
    let names = TopicNames::from_config(config);
    let layout = kafka::check_layout(config)?;
    let mut all = names.inputs();
    all.extend(names.outputs());
    let partitions = kafka::partition_counts(config, &all)?;
    // A length inside a record can claim any size; Avro may allocate no more than a whole
    // record may hold (set once per process, before the first decode).
    apache_avro::util::max_allocation_bytes(config.limits.record_bytes_max);
    let codec = Codec::from_config(config)?;
    let mut produced = names.outputs().to_vec();
    produced.push(&names.sku_commands);
    status
        .metrics
        .declare(&names.order_inputs(), &names.sku_inputs(), &produced);
    status
        .queries
        .set_layout(layout.order_partitions, layout.sku_partitions);
    let start = match start {
        Some(s) => Some(s),
        None => group_offsets(config, &names)?,
    };
    let ends = match &mode {
        Mode::UntilEnd => Some(capture_ends(config, &names, &codec, None, start.as_ref())?),
        Mode::UntilOffsets(known) => Some(capture_ends(
            config,
            &names,
            &codec,
            Some(known),
            start.as_ref(),
        )?),
        Mode::Live => None,
    };
    let state_root = config.state.dir.join(&config.kafka.application_id);
    let transactional = config.kafka.processing_guarantee == Guarantee::ExactlyOnce;
    let producer = open_producer(config, &state_root, &status.metrics, transactional)?;
    let engine = Engine {
        config: config.clone(),
        names: names.clone(),
        live_ends: RefCell::new(BTreeMap::new()),
        end_queries_after: Cell::new(None),
        codec,
        layout,
        partitions,
        state_root,
        producer,
        transactional,
        order: BTreeMap::new(),
        sku: BTreeMap::new(),
        paused: BTreeSet::new(),
        wall_clock_advance: mode == Mode::Live && config.runtime.wall_clock_advance,
        queue_wait: Duration::from_millis(config.runtime.produce_queue_wait_ms),
        watermark_interval: (mode == Mode::Live && config.runtime.watermark_interval_ms > 0)
            .then(|| Duration::from_millis(config.runtime.watermark_interval_ms)),
        last_watermarks: Instant::now(),
        ends,
        start_offsets: start,
        last_commit: Instant::now(),
        dirty: false,
        status: status.clone(),
        last_gauges: None,
        report: RunReport::default(),
        processing_started: None,
        fatal: None,
        retry: None,
        journals: BTreeMap::new(),
        stale_producer: false,
        batch_records: config.limits.commit_records_max,
    };
    status
        .metrics
        .set_commit_batch(config.limits.commit_records_max);
    let context = GroupContext {
        engine: Mutex::new(engine),
        status: status.clone(),
    };
    let consumer: BaseConsumer<GroupContext> =
        consumer_config(config).create_with_context(context)?;
    match mode {
        Mode::Live => consumer.subscribe(&names.inputs())?,
        Mode::UntilEnd | Mode::UntilOffsets(_) => {
            // A bounded run takes every partition itself instead of joining the group: it
            // cannot be rebalanced away mid-run, and a restart after a crash starts at once
            // instead of waiting out the dead member's session.
            let mut tpl = TopicPartitionList::new();
            for (topic, n) in names
                .order_inputs()
                .into_iter()
                .zip([layout.order_partitions; 3])
            {
                tpl.add_partition_range(topic, 0, n as i32 - 1);
            }
            for topic in names.sku_inputs() {
                tpl.add_partition_range(topic, 0, layout.sku_partitions as i32 - 1);
            }
            consumer.context().engine().open_tasks(&mut tpl)?;
            consumer.assign(&tpl)?;
        }
    }
    tracing::info!(
        group = %config.kafka.application_id,
        order_partitions = layout.order_partitions,
        sku_partitions = layout.sku_partitions,
        ?mode,
        "consumer started"
    );

    let poll_max = config.runtime.poll_records_max;
    let poll_timeout = Duration::from_millis(config.runtime.poll_timeout_ms);
    let ack_timeout = Duration::from_millis(config.runtime.produce_ack_timeout_ms);
    let mut batch: Vec<Consumed> = Vec::with_capacity(poll_max);
    let mut wait = Duration::ZERO;
    let mut last_progress = Instant::now();
    // The loop runs in a closure so that any error, wherever it happens, abandons the tasks
    // below before the consumer is closed.
    let outcome = (|| -> Result<(), RuntimeError> {
        loop {
            if shutdown.requested() {
                break;
            }
            status.beat();
            // Poll without the lock: a rebalance callback inside poll takes it.
            batch.clear();
            let mut timeout = wait;
            let mut reached_broker = false;
            while batch.len() < poll_max {
                match consumer.poll(timeout) {
                    None => break,
                    Some(Ok(m)) => {
                        reached_broker = true;
                        if let Some(slot) = names.slot(m.topic()) {
                            batch.push(Consumed {
                                slot,
                                partition: m.partition(),
                                offset: m.offset(),
                                timestamp_ms: m.timestamp().to_millis(),
                                key: m.key().map(<[u8]>::to_vec),
                                value: m.payload().map(<[u8]>::to_vec),
                            });
                        }
                    }
                    Some(Err(e)) => consumer.context().consumer_error(e)?,
                }
                timeout = Duration::ZERO;
            }
            let ctx = consumer.context();
            if reached_broker {
                ctx.brokers_up();
            }
            let mut engine = ctx.engine();
            if let Some(e) = engine.fatal.take() {
                return Err(e);
            }
            let polled = batch.len();
            let mut consumed = [0u64; order_stage::INPUTS + sku_stage::INPUTS];
            for record in batch.drain(..) {
                consumed[match record.slot {
                    InputSlot::Order(rank) => rank,
                    InputSlot::Sku(input) => order_stage::INPUTS + input,
                }] += 1;
                engine.push(&consumer, record)?;
            }
            let inputs = names.order_inputs().into_iter().chain(names.sku_inputs());
            for (topic, records) in inputs.zip(consumed) {
                if records > 0 {
                    status.metrics.emit(Occurrence::Consumed { topic, records });
                }
            }
            let processed = engine.run_tasks(&consumer);
            let processed = engine.or_retry(&consumer, processed)?;
            tracing::trace!(polled, processed, "round");
            let finished_now = engine.finish_order_stage(&consumer);
            let finished_now = engine.or_retry(&consumer, finished_now)?;
            if engine.commit_due() || finished_now {
                let advanced = engine.advance_idle(&consumer);
                engine.or_retry(&consumer, advanced)?;
                engine.commit_or_retry(&consumer, ack_timeout)?;
            }
            engine.resume_drained(&consumer)?;
            if engine.bounded_done(&consumer) {
                engine.commit_or_retry(&consumer, ack_timeout)?;
                if engine.retry.is_none() {
                    break;
                }
            }
            engine.reopen_due(&consumer)?;
            if processed > 0 || polled > 0 {
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL_REPORT {
                engine.log_waiting();
                last_progress = Instant::now();
            }
            wait = if processed == 0 && polled == 0 {
                poll_timeout
            } else {
                Duration::ZERO
            };
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        consumer.context().engine().abandon();
        drop(consumer);
        return Err(e);
    }

    // Shutdown: commit what is processed, close the tasks, then leave the group (dropping the
    // consumer closes it, which revokes an empty assignment).
    let deadline = Duration::from_millis(config.runtime.shutdown_timeout_ms);
    let report = {
        let ctx = consumer.context();
        let mut engine = ctx.engine();
        if let Err(e) = engine.commit(&consumer, deadline) {
            // Nothing of the batch may be committed now: not by the revocation that dropping
            // the consumer triggers, whose commit would find the refused records forgotten.
            engine.abandon();
            return Err(match e {
                RuntimeError::Kafka(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {
                    RuntimeError::ShutdownTimeout
                }
                other => other,
            });
        }
        engine.collect_report()?;
        engine.close_all();
        let mut report = engine.report.clone();
        report.elapsed = engine.processing_started.unwrap_or(started).elapsed();
        report
    };
    drop(consumer);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition is read to its end when the task's next offset is there, or when offsets
    /// no task receives fill the rest: a transaction marker (the consumer's position is past
    /// it) or records deleted before anyone read them (the log starts at the end). Comparing
    /// the next offset alone, both kept the partition short of its end for good.
    #[test]
    fn offsets_no_task_receives_do_not_keep_a_partition_short_of_its_end() {
        let never = || -> Option<i64> { None };
        assert!(at_end(11, never, Some((0, 11))));
        // Ten records, then the marker at offset 10 that commits their transaction.
        assert!(at_end(10, || Some(11), Some((0, 11))));
        // Every record deleted by retention before the task read any.
        assert!(at_end(0, never, Some((50, 50))));
        // Records still to come.
        assert!(!at_end(5, || Some(5), Some((0, 11))));
        assert!(!at_end(5, never, Some((3, 11))));
        assert!(
            !at_end(5, || Some(11), None),
            "no known end: never caught up"
        );
    }
}
