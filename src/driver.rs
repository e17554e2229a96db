//! The broker-free driver, orderfold's TopologyTestDriver: both stages with any number of
//! partitions, real tasks on real RocksDB directories, and an in-memory log per topic
//! partition in place of Kafka. It owns nothing the runtime doesn't also do: records are routed
//! by the same murmur2 partitioner and tasks are fed, run and committed the same way, so the
//! Kafka runtime can be compared against it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{AvroRecord, Codec};
use crate::config::Config;
use crate::event::{Millis, OversellAlert, ReservationExpired, TrackingStatus};
use crate::fold::order::Order;
use crate::fold::tracking::Tracking;
use crate::merge;
use crate::partition::partition_for_key;
use crate::sink::{OutRecord, OutTopic, Route};
use crate::stage::order::{self as order_stage, OrderTask, OrderView};
use crate::stage::sku::{self as sku_stage, SkuTask, SkuView};
use crate::stage::{Accounting, Input, TaskError};

/// Topic names, shared with the runtime's defaults.
pub mod topics {
    pub const ORDERS: &str = "orders";
    pub const PAYMENTS: &str = "payments";
    pub const LOGISTICS: &str = "logistics";
    pub const INVENTORY: &str = "inventory";
    pub const RESERVATION_EXPIRY: &str = "reservation-expiry";
    pub const TRACKING_STATUS: &str = "tracking-status";
    pub const OVERSELL_ALERTS: &str = "oversell-alerts";
    pub const SKU_COMMANDS: &str = "orderfold.sku-commands";
    pub const DLQ: &str = "orderfold.dlq";
    pub const INPUTS: [&str; 4] = [ORDERS, PAYMENTS, LOGISTICS, INVENTORY];
}

/// One record in a driver topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// For input records: the record's index among its topic's records, reported by dead
    /// letters in place of a Kafka offset.
    pub origin_offset: i64,
    /// The record's Kafka timestamp, when it has one.
    pub timestamp_ms: Option<Millis>,
}

/// How many partitions each stage has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub order_partitions: u32,
    pub sku_partitions: u32,
}

impl Topology {
    pub fn uniform(partitions: u32) -> Topology {
        Topology {
            order_partitions: partitions.max(1),
            sku_partitions: partitions.max(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("unknown input topic {0}")]
    UnknownTopic(String),
    #[error("codec: {0}")]
    Schema(#[from] crate::codec::SchemaError),
}

/// Hands `task` the records of `log` for `input` from `fetch` on, until its buffer is full
/// (as a consumer pauses a full partition). Returns whether the task has caught up with the log.
fn feed(log: &[Record], fetch: &mut i64, task: &mut impl Input, input: usize) -> bool {
    while let Some(r) = usize::try_from(*fetch).ok().and_then(|i| log.get(i)) {
        if task.is_full(input) {
            break;
        }
        task.push(
            input,
            *fetch,
            r.origin_offset,
            r.timestamp_ms,
            r.key.clone(),
            r.value.clone(),
        );
        *fetch += 1;
    }
    usize::try_from(*fetch).is_ok_and(|f| f >= log.len())
}

/// A whole topology, fed from in-memory logs.
pub struct Driver {
    dir: PathBuf,
    config: Config,
    codec: Arc<Codec>,
    topology: Topology,
    logs: BTreeMap<String, Vec<Vec<Record>>>,
    order_tasks: Vec<OrderTask>,
    sku_tasks: Vec<SkuTask>,
    /// Next offset to hand each task, per input: the tasks' resume offsets after a reopen.
    order_fetch: Vec<[i64; order_stage::INPUTS]>,
    sku_fetch: Vec<[i64; sku_stage::INPUTS]>,
}

impl Driver {
    /// A topology whose tasks keep their state under `dir` (one directory per task); reopening
    /// the same `dir` resumes every task from its committed offsets.
    pub fn open(dir: &Path, topology: Topology, config: Config) -> Result<Driver, DriverError> {
        // The driver reads what the config's writer schemas say; schema ids and output framing
        // belong to a broker deployment.
        let codec = Codec::with_writer_schemas(&Codec::writer_schema_texts(&config.avro)?)?;
        let mut logs = BTreeMap::new();
        for t in [
            topics::ORDERS,
            topics::PAYMENTS,
            topics::LOGISTICS,
            topics::RESERVATION_EXPIRY,
            topics::TRACKING_STATUS,
        ] {
            logs.insert(
                t.to_string(),
                vec![Vec::new(); topology.order_partitions as usize],
            );
        }
        for t in [
            topics::INVENTORY,
            topics::SKU_COMMANDS,
            topics::OVERSELL_ALERTS,
        ] {
            logs.insert(
                t.to_string(),
                vec![Vec::new(); topology.sku_partitions as usize],
            );
        }
        logs.insert(topics::DLQ.to_string(), vec![Vec::new(); 1]);
        let mut driver = Driver {
            dir: dir.to_path_buf(),
            config,
            codec,
            topology,
            logs,
            order_tasks: Vec::new(),
            sku_tasks: Vec::new(),
            order_fetch: Vec::new(),
            sku_fetch: Vec::new(),
        };
        driver.open_tasks()?;
        Ok(driver)
    }

    fn open_tasks(&mut self) -> Result<(), DriverError> {
        self.order_tasks.clear();
        self.sku_tasks.clear();
        let order_topics = [topics::ORDERS, topics::PAYMENTS, topics::LOGISTICS].map(String::from);
        for p in 0..self.topology.order_partitions {
            let dir = self.dir.join(format!("order-{p}"));
            let task = OrderTask::open(
                &dir,
                p,
                order_topics.clone(),
                self.codec.clone(),
                &self.config,
            )?;
            self.order_tasks.push(task);
        }
        let sku_topics = [topics::INVENTORY, topics::SKU_COMMANDS].map(String::from);
        for p in 0..self.topology.sku_partitions {
            let dir = self.dir.join(format!("sku-{p}"));
            let task = SkuTask::open(
                &dir,
                p,
                sku_topics.clone(),
                self.topology.order_partitions,
                self.codec.clone(),
                &self.config,
            )?;
            self.sku_tasks.push(task);
        }
        self.order_fetch = self
            .order_tasks
            .iter()
            .map(|t| std::array::from_fn(|i| t.next_offset(i)))
            .collect();
        self.sku_fetch = self
            .sku_tasks
            .iter()
            .map(|t| std::array::from_fn(|i| t.next_offset(i)))
            .collect();
        Ok(())
    }

    pub fn codec(&self) -> &Arc<Codec> {
        &self.codec
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Appends one record to an input topic, on the partition Kafka's default partitioner
    /// would choose (a record without a key goes to partition 0).
    pub fn pipe(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<Vec<u8>>,
    ) -> Result<(), DriverError> {
        self.pipe_at(topic, key, value, None)
    }

    /// Appends one record as `pipe` does, stamped with the Kafka timestamp `timestamp_ms`.
    pub fn pipe_at(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<Vec<u8>>,
        timestamp_ms: Option<Millis>,
    ) -> Result<(), DriverError> {
        if !topics::INPUTS.contains(&topic) {
            return Err(DriverError::UnknownTopic(topic.to_string()));
        }
        let origin_offset = self.logs[topic].iter().map(Vec::len).sum::<usize>() as i64;
        let record = Record {
            key: key.map(<[u8]>::to_vec),
            value,
            headers: Vec::new(),
            origin_offset,
            timestamp_ms,
        };
        self.append(topic, key, None, record);
        Ok(())
    }

    /// Encodes and pipes one event, keyed by `key`.
    pub fn pipe_event<T: AvroRecord>(
        &mut self,
        topic: &str,
        key: &str,
        event: &T,
    ) -> Result<(), DriverError> {
        let bytes = self.codec.encode(event).map_err(TaskError::from)?;
        self.pipe(topic, Some(key.as_bytes()), Some(bytes))
    }

    /// Appends a record to any topic's partition as is: how a test re-delivers records, as
    /// a retried batch or a replayed producer would.
    pub fn inject(&mut self, topic: &str, partition: u32, record: Record) {
        self.append(topic, None, Some(partition), record);
    }

    fn append(&mut self, topic: &str, key: Option<&[u8]>, partition: Option<u32>, record: Record) {
        let Some(partitions) = self.logs.get_mut(topic) else {
            return;
        };
        let n = partitions.len() as u32;
        let p = match (partition, key) {
            (Some(p), _) => p % n,
            (None, Some(k)) => partition_for_key(k, n),
            (None, None) => 0,
        };
        partitions[p as usize].push(record);
    }

    fn deliver(&mut self, out: Vec<OutRecord>) {
        for r in out {
            let topic = match r.topic {
                OutTopic::ReservationExpiry => topics::RESERVATION_EXPIRY,
                OutTopic::TrackingStatus => topics::TRACKING_STATUS,
                OutTopic::OversellAlerts => topics::OVERSELL_ALERTS,
                OutTopic::SkuCommands => topics::SKU_COMMANDS,
                OutTopic::DeadLetters => topics::DLQ,
            };
            let record = Record {
                key: r.key.clone(),
                value: r.value,
                headers: r.headers,
                origin_offset: -1,
                timestamp_ms: None,
            };
            match r.route {
                Route::ByKey => self.append(topic, r.key.as_deref(), None, record),
                Route::Partition(p) => self.append(topic, None, Some(p), record),
                Route::EveryPartition => {
                    let n = self.logs.get(topic).map_or(0, Vec::len) as u32;
                    for p in 0..n {
                        self.append(topic, None, Some(p), record.clone());
                    }
                }
            }
        }
    }

    /// One round: every task is fed, processes at most `batch_records` records and commits.
    /// Returns whether any task made progress.
    pub fn step(&mut self, batch_records: usize) -> Result<bool, DriverError> {
        self.step_inner(batch_records, true)
    }

    /// A round whose outputs are delivered but whose commits never happen, as when a process
    /// dies between producing and committing. Follow it with `reopen`.
    pub fn step_without_commit(&mut self, batch_records: usize) -> Result<bool, DriverError> {
        self.step_inner(batch_records, false)
    }

    fn step_inner(&mut self, batch_records: usize, commit: bool) -> Result<bool, DriverError> {
        let mut progressed = false;
        let order_inputs = [topics::ORDERS, topics::PAYMENTS, topics::LOGISTICS];
        let mut caught_up = vec![[false; order_stage::INPUTS]; self.order_tasks.len()];
        for (p, caught_up) in caught_up.iter_mut().enumerate() {
            for (rank, topic) in order_inputs.iter().enumerate() {
                caught_up[rank] = feed(
                    &self.logs[*topic][p],
                    &mut self.order_fetch[p][rank],
                    &mut self.order_tasks[p],
                    rank,
                );
            }
        }
        // The runtime's alignment, so the reference runs the same code.
        let until = merge::aligned_until(
            self.order_tasks
                .iter()
                .zip(&caught_up)
                .filter_map(|(task, done)| task.position(*done)),
            self.config.runtime.watermark_alignment_ms,
        );
        for (p, caught_up) in caught_up.into_iter().enumerate() {
            let mut out = Vec::new();
            let task = &mut self.order_tasks[p];
            progressed |= task.run(caught_up, batch_records, until, &mut out)? > 0;
            task.prepare_commit(&mut out)?;
            progressed |= !out.is_empty();
            self.deliver(out);
            if commit {
                self.order_tasks[p].commit()?;
            }
        }
        let sku_inputs = [topics::INVENTORY, topics::SKU_COMMANDS];
        for p in 0..self.sku_tasks.len() {
            let mut out = Vec::new();
            // A reopened task reads its pending commands back before it does anything else,
            // whatever the buffer holds at a time: feed it until it has.
            loop {
                let mut caught_up = [false; sku_stage::INPUTS];
                for (input, topic) in sku_inputs.iter().enumerate() {
                    caught_up[input] = feed(
                        &self.logs[*topic][p],
                        &mut self.sku_fetch[p][input],
                        &mut self.sku_tasks[p],
                        input,
                    );
                }
                let task = &mut self.sku_tasks[p];
                progressed |=
                    task.run(caught_up[sku_stage::INVENTORY], batch_records, &mut out)? > 0;
                if !task.rebuilding() || caught_up[sku_stage::COMMANDS] {
                    break;
                }
            }
            let task = &mut self.sku_tasks[p];
            task.prepare_commit()?;
            self.deliver(out);
            if commit {
                self.sku_tasks[p].commit()?;
            }
        }
        Ok(progressed)
    }

    /// Steps until no task can make progress with the input piped so far.
    pub fn run_until_idle(&mut self, batch_records: usize) -> Result<(), DriverError> {
        while self.step(batch_records)? {}
        Ok(())
    }

    /// The largest occurred_at among valid input records: where a bounded run ends.
    pub fn end_of_input_time(&self) -> Millis {
        let mut end = Millis::MIN;
        let bounds = crate::validate::Bounds::from_config(&self.config);
        for (rank, topic) in [topics::ORDERS, topics::PAYMENTS, topics::LOGISTICS]
            .iter()
            .enumerate()
        {
            for r in self.logs[*topic].iter().flatten() {
                if let Ok(e) = order_stage::decode_input(
                    &self.codec,
                    &bounds,
                    rank,
                    r.key.as_deref(),
                    r.value.as_deref(),
                    r.timestamp_ms,
                ) {
                    end = end.max(e.occurred_at());
                }
            }
        }
        for r in self.logs[topics::INVENTORY].iter().flatten() {
            if let Ok(e) = sku_stage::decode_inventory(
                &self.codec,
                &bounds,
                r.key.as_deref(),
                r.value.as_deref(),
                r.timestamp_ms,
            ) {
                end = end.max(e.occurred_at);
            }
        }
        end
    }

    /// Ends a bounded run: processes everything piped, advances every order task to the end
    /// of input (firing what is due before it), and lets the SKU stage apply every command.
    pub fn finish(&mut self, batch_records: usize) -> Result<(), DriverError> {
        self.run_until_idle(batch_records)?;
        let end = self.end_of_input_time();
        for p in 0..self.order_tasks.len() {
            let mut out = Vec::new();
            let task = &mut self.order_tasks[p];
            task.finish(end, &mut out)?;
            task.prepare_commit(&mut out)?;
            self.deliver(out);
            self.order_tasks[p].commit()?;
        }
        self.run_until_idle(batch_records)
    }

    /// Closes every task and opens it again from its directory, as a restart would.
    pub fn reopen(&mut self) -> Result<(), DriverError> {
        self.order_tasks.clear();
        self.sku_tasks.clear();
        self.open_tasks()
    }

    /// The records of a topic, partition by partition.
    pub fn records(&self, topic: &str) -> Vec<&Record> {
        self.logs
            .get(topic)
            .map(|ps| ps.iter().flatten().collect())
            .unwrap_or_default()
    }

    fn decoded<T: AvroRecord>(&self, topic: &str) -> Vec<T> {
        self.records(topic)
            .into_iter()
            .filter_map(|r| r.value.as_deref().and_then(|v| self.codec.decode(v).ok()))
            .collect()
    }

    pub fn expiries(&self) -> Vec<ReservationExpired> {
        self.decoded(topics::RESERVATION_EXPIRY)
    }

    pub fn tracking_statuses(&self) -> Vec<TrackingStatus> {
        self.decoded(topics::TRACKING_STATUS)
    }

    pub fn alerts(&self) -> Vec<OversellAlert> {
        self.decoded(topics::OVERSELL_ALERTS)
    }

    pub fn dead_letters(&self) -> Vec<&Record> {
        self.records(topics::DLQ)
    }

    /// Every SKU's state, in sku order.
    pub fn skus(&self) -> Result<Vec<SkuView>, DriverError> {
        Ok(sku_stage::skus_of(&self.sku_tasks)?)
    }

    pub fn sku(&self, sku: &str) -> Result<Option<SkuView>, DriverError> {
        let p = partition_for_key(sku.as_bytes(), self.topology.sku_partitions) as usize;
        Ok(self.sku_tasks[p].sku_view(sku)?)
    }

    /// Every order with its tracking, in order_id order.
    pub fn orders(&self) -> Result<Vec<OrderView>, DriverError> {
        Ok(order_stage::orders_of(&self.order_tasks)?)
    }

    pub fn order(&self, order_id: &str) -> Result<(Option<Order>, Option<Tracking>), DriverError> {
        let p = partition_for_key(order_id.as_bytes(), self.topology.order_partitions) as usize;
        let t = &self.order_tasks[p];
        Ok((t.order(order_id)?, t.tracking(order_id)?))
    }

    /// Orders with events still parked.
    pub fn parked(&self) -> Result<Vec<(String, usize)>, DriverError> {
        let mut all = Vec::new();
        for t in &self.order_tasks {
            all.extend(t.parked()?);
        }
        all.sort();
        Ok(all)
    }

    /// Accounting per input topic, summed over tasks.
    pub fn accounting(&self) -> BTreeMap<String, Accounting> {
        let mut all: BTreeMap<String, Accounting> = BTreeMap::new();
        for t in &self.order_tasks {
            for (rank, topic) in [topics::ORDERS, topics::PAYMENTS, topics::LOGISTICS]
                .iter()
                .enumerate()
            {
                all.entry(topic.to_string())
                    .or_default()
                    .merge(&t.meta().accounting[rank]);
            }
        }
        for t in &self.sku_tasks {
            for (input, topic) in [topics::INVENTORY, topics::SKU_COMMANDS].iter().enumerate() {
                all.entry(topic.to_string())
                    .or_default()
                    .merge(&t.meta().accounting[input]);
            }
        }
        all
    }

    pub fn order_tasks(&self) -> &[OrderTask] {
        &self.order_tasks
    }

    pub fn sku_tasks(&self) -> &[SkuTask] {
        &self.sku_tasks
    }
}
