//! An order-stage task: partition p of `orders`, `payments` and `logistics`. It owns order,
//! tracking and orphan state, the reservation timers, the forgetting of final orders and the
//! task's stream time, and turns each record into state changes, outputs and SKU commands for
//! the SKU stage.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::{AvroRecord, Codec, DecodeError};
use crate::config::Config;
use crate::event::{
    LogisticsEvent, Millis, OrderBody, OrderEvent, PaymentBody, PaymentEvent, SkuCommand, Watermark,
};
use crate::fold::order::{self as rules, Order, OrderStatus};
use crate::fold::tracking::{self, Tracking};
use crate::fold::Ignored;
use crate::merge::{self, Head, Next};
use crate::sink::{DeadLetterReason, Origin, OutRecord, OutTopic, Route};
use crate::stage::retention::Retention;
use crate::stage::{Accounting, Buffered, Dedup, Input, TaskError};
use crate::state::{key, StateOptions, Store, TaskDb};
use crate::validate::{self, Bounds};

/// Input ranks: the merge's tie-breaker and the index of every per-input array.
pub const ORDERS: usize = 0;
pub const PAYMENTS: usize = 1;
pub const LOGISTICS: usize = 2;
pub const INPUTS: usize = 3;

/// A decoded, valid input of the order stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderInput {
    Order(OrderEvent),
    Payment(PaymentEvent),
    Scan(LogisticsEvent),
}

impl OrderInput {
    pub fn occurred_at(&self) -> Millis {
        match self {
            OrderInput::Order(e) => e.occurred_at,
            OrderInput::Payment(e) => e.occurred_at,
            OrderInput::Scan(e) => e.occurred_at,
        }
    }

    pub fn event_id(&self) -> &str {
        match self {
            OrderInput::Order(e) => &e.event_id,
            OrderInput::Payment(e) => &e.event_id,
            OrderInput::Scan(e) => &e.event_id,
        }
    }
}

/// Decodes and validates one record of input `rank`; `timestamp_ms` is its Kafka timestamp.
pub fn decode_input(
    codec: &Codec,
    bounds: &Bounds,
    rank: usize,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    timestamp_ms: Option<Millis>,
) -> Result<OrderInput, (DeadLetterReason, String)> {
    let bytes = value.ok_or((DeadLetterReason::Decode, "record has no value".to_string()))?;
    bounds
        .record_size(bytes)
        .map_err(|v| (DeadLetterReason::Validation, v))?;
    fn decode<T: AvroRecord>(codec: &Codec, bytes: &[u8]) -> Result<T, (DeadLetterReason, String)> {
        codec.decode::<T>(bytes).map_err(|e| match e {
            DecodeError::Decode(d) => (DeadLetterReason::Decode, d),
            DecodeError::UnknownSchema(d) => (DeadLetterReason::Schema, d),
        })
    }
    let invalid = |v: String| (DeadLetterReason::Validation, v);
    let input = match rank {
        ORDERS => {
            let e: OrderEvent = decode(codec, bytes)?;
            validate::order(key, &e, bounds).map_err(invalid)?;
            OrderInput::Order(e)
        }
        PAYMENTS => {
            let e: PaymentEvent = decode(codec, bytes)?;
            validate::payment(key, &e, bounds).map_err(invalid)?;
            OrderInput::Payment(e)
        }
        _ => {
            let e: LogisticsEvent = decode(codec, bytes)?;
            validate::logistics(key, &e, bounds).map_err(invalid)?;
            OrderInput::Scan(e)
        }
    };
    bounds
        .skew(input.occurred_at(), timestamp_ms)
        .map_err(invalid)?;
    Ok(input)
}

/// What orderfold knows about one order id: the order (absent for tracking-only ids) and its
/// tracking (absent before the first scan). Both `inspect` and `simulate` show this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    pub order: Option<Order>,
    pub tracking: Option<Tracking>,
}

/// A valid record being processed, or parked until its order's OrderPlaced arrives.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Parked {
    parked_at: Millis,
    rank: usize,
    origin: Origin,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    event: OrderInput,
}

/// What the task commits beside its stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderMeta {
    /// Offset of the next record to process, per input rank.
    pub next_offsets: [i64; INPUTS],
    pub stream_time: Millis,
    pub end_of_input: bool,
    pub accounting: [Accounting; INPUTS],
    pub expiries: u64,
    pub tracking_updates: u64,
    pub commands: u64,
    /// The last watermark sent: `(stream time, end of input)`. Committed, so a reopened task
    /// does not send it again (a crash before the commit does, harmlessly).
    pub published_watermark: Option<(Millis, bool)>,
}

impl Default for OrderMeta {
    fn default() -> Self {
        OrderMeta {
            next_offsets: [0; INPUTS],
            stream_time: Millis::MIN,
            end_of_input: false,
            accounting: Default::default(),
            expiries: 0,
            tracking_updates: 0,
            commands: 0,
            published_watermark: None,
        }
    }
}

const META_KEY: &[u8] = b"order-task";
const TIMER_RESERVATION: u8 = 0;
const TIMER_ORPHAN: u8 = 1;

fn timer_key(at: Millis, kind: u8, order_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + order_id.len());
    key::push_time(&mut k, at);
    k.push(kind);
    k.extend_from_slice(order_id.as_bytes());
    k
}

/// One order with its tracking as `db` holds it: what `inspect order` prints and
/// `/state/order/{order_id}` answers. None when the task knows neither.
pub fn order_view(db: &TaskDb, order_id: &str) -> Result<Option<OrderView>, TaskError> {
    let order: Option<Order> = db.get(Store::Orders, order_id.as_bytes())?;
    let tracking: Option<Tracking> = db.get(Store::Tracking, order_id.as_bytes())?;
    if order.is_none() && tracking.is_none() {
        return Ok(None);
    }
    Ok(Some(OrderView {
        order_id: order_id.to_string(),
        order,
        tracking,
    }))
}

/// Every order of `tasks` with its tracking, in order_id order.
pub fn orders_of(tasks: &[OrderTask]) -> Result<Vec<OrderView>, TaskError> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.orders()?);
    }
    all.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    Ok(all)
}

/// One decision of an order task that arrival timing, not the log, made: which input's next
/// record it took, or a move of stream time without a record (live mode's wall-clock advance).
/// The log alone fixes everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Take(usize),
    Advance(Millis),
}

/// One order-stage task.
pub struct OrderTask {
    partition: u32,
    topics: [String; INPUTS],
    db: TaskDb,
    codec: Arc<Codec>,
    reservation_ttl_ms: Millis,
    orphan_ttl_ms: Millis,
    dedup: Dedup,
    buffer_records_max: usize,
    /// The config's bounds on an input record.
    bounds: Bounds,
    meta: OrderMeta,
    buffers: [VecDeque<Buffered<OrderInput>>; INPUTS],
    /// Every timer key, mirrored from the `timers` store so the earliest is known at once.
    timers: BTreeSet<Vec<u8>>,
    /// When final order ids are forgotten: too many to mirror, so read a window at a time.
    retention: Retention,
    /// The steps taken since the last commit (at most a batch of records and its advances).
    journal: Vec<Step>,
    /// A dropped attempt's steps, taken again before any new decision (see `replay`).
    replay: VecDeque<Step>,
    scratch: Vec<SkuCommand>,
}

impl OrderTask {
    /// Opens the task's state in `dir`, resuming from its committed offsets.
    pub fn open(
        dir: &Path,
        partition: u32,
        topics: [String; INPUTS],
        codec: Arc<Codec>,
        config: &Config,
    ) -> Result<OrderTask, TaskError> {
        let db = TaskDb::open(dir, &Store::ORDER_STAGE, &StateOptions::from_config(config))?;
        Self::from_db(db, partition, topics, codec, config)
    }

    /// The task over an opened (and, by the runtime, restored) database.
    pub fn from_db(
        db: TaskDb,
        partition: u32,
        topics: [String; INPUTS],
        codec: Arc<Codec>,
        config: &Config,
    ) -> Result<OrderTask, TaskError> {
        let meta = Self::committed_meta(&db)?;
        let timers = db
            .scan_prefix(Store::Timers, &[])?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        Ok(OrderTask {
            partition,
            topics,
            db,
            codec,
            reservation_ttl_ms: config.rules.reservation_ttl_ms,
            orphan_ttl_ms: config.rules.orphan_ttl_ms,
            dedup: Dedup::new(
                config.rules.dedup_retention_ms,
                config.limits.dedup_purge_per_commit_max,
            ),
            buffer_records_max: config.limits.buffer_records_max,
            bounds: Bounds::from_config(config),
            meta,
            buffers: Default::default(),
            timers,
            retention: Retention::new(
                config.rules.final_retention_ms,
                config.limits.forget_timers_cached_max,
            ),
            journal: Vec::new(),
            replay: VecDeque::new(),
            scratch: Vec::new(),
        })
    }

    /// Makes this task, opened at the commit a dropped attempt started from, take that
    /// attempt's `steps` again before deciding anything itself: the same records in the same
    /// order, the same advances of stream time at the same points. The dropped attempt's
    /// commands, watermarks and outputs may already be on the broker, so the retry must send
    /// exactly them again, whatever the fetch and the wall clock do this time.
    pub fn replay(&mut self, steps: Vec<Step>) {
        self.replay = steps.into();
    }

    /// Whether steps of a dropped attempt remain to be taken again.
    pub fn replaying(&self) -> bool {
        !self.replay.is_empty()
    }

    /// The steps a retry must take again if this attempt is dropped now: those taken since the
    /// last commit, then those of an earlier dropped attempt not taken again yet.
    pub fn take_journal(&mut self) -> Vec<Step> {
        let mut steps = std::mem::take(&mut self.journal);
        steps.extend(self.replay.drain(..));
        steps
    }

    /// The meta of the last commit, without a bounded run's end of input: that end belongs to
    /// the run that reached it. A later live run, or a bounded run over more input, must not
    /// inherit it, or the SKU stage would apply its commands in arrival order for good.
    fn committed_meta(db: &TaskDb) -> Result<OrderMeta, TaskError> {
        let mut meta = db
            .get::<OrderMeta>(Store::Meta, META_KEY)?
            .unwrap_or_default();
        meta.end_of_input = false;
        Ok(meta)
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn meta(&self) -> &OrderMeta {
        &self.meta
    }

    /// Where to resume input `rank`: after the last record processed (committed or not).
    pub fn next_offset(&self, rank: usize) -> i64 {
        self.meta.next_offsets[rank]
    }

    /// Sets where a task that has processed nothing starts its inputs (a replay from a
    /// timestamp or an offsets file). False, and nothing changes, once it has processed.
    pub fn start_at(&mut self, offsets: [i64; INPUTS]) -> bool {
        if self.meta.next_offsets.iter().any(|o| *o != 0) || self.meta.stream_time != Millis::MIN {
            return false;
        }
        self.meta.next_offsets = offsets;
        true
    }

    pub fn buffered(&self, rank: usize) -> usize {
        self.buffers[rank].len()
    }

    fn head(&self, rank: usize, caught_up: bool) -> Head {
        match self.buffers[rank].front() {
            None => Head::Empty { caught_up },
            Some(b) => match &b.decoded {
                Ok(e) => Head::Event {
                    occurred_at: e.occurred_at(),
                },
                Err(_) => Head::DeadLetter,
            },
        }
    }

    /// Where the task stands, for the alignment of order tasks (`merge::aligned_until`): the
    /// time of the record it processes next, or its stream time while it waits for input.
    /// Never the stream time alone: a task whose next record lies beyond the others' bound
    /// must still be able to take it when it is the slowest. None when every input is caught
    /// up: the task has nothing to catch up with.
    pub fn position(&self, caught_up: [bool; INPUTS]) -> Option<Millis> {
        if caught_up.iter().all(|c| *c) && self.buffers.iter().all(VecDeque::is_empty) {
            return None;
        }
        let heads = [
            self.head(ORDERS, caught_up[ORDERS]),
            self.head(PAYMENTS, caught_up[PAYMENTS]),
            self.head(LOGISTICS, caught_up[LOGISTICS]),
        ];
        Some(match merge::next_order_stage(&heads) {
            Next::Record(rank) => match heads[rank] {
                Head::Event { occurred_at } => occurred_at.max(self.meta.stream_time),
                _ => self.meta.stream_time,
            },
            _ => self.meta.stream_time,
        })
    }

    /// Processes up to `max_records` buffered records in merge order, none stamped after
    /// `until` (the runtime's alignment of its order tasks, `merge::aligned_until`).
    /// `caught_up[rank]` says that input is at its last known end, so the merge need not wait
    /// for it. Returns how many records were processed.
    pub fn run(
        &mut self,
        caught_up: [bool; INPUTS],
        max_records: usize,
        until: Millis,
        out: &mut Vec<OutRecord>,
    ) -> Result<usize, TaskError> {
        // The end of input an earlier run announced is taken back before this run sends any
        // command, so none of them is applied in arrival order.
        if !self.meta.end_of_input && self.meta.published_watermark.is_some_and(|(_, end)| end) {
            self.publish_watermark(out)?;
        }
        let mut processed = 0;
        while processed < max_records {
            let rank = match self.replay.front().copied() {
                // A dropped attempt's step: its record is taken once fetched, whatever the
                // merge would choose now.
                Some(Step::Take(rank)) => {
                    if self.buffers.get(rank).is_none_or(VecDeque::is_empty) {
                        break;
                    }
                    self.replay.pop_front();
                    rank
                }
                Some(Step::Advance(t)) => {
                    self.replay.pop_front();
                    self.advance_to(t, out)?;
                    continue;
                }
                None => {
                    let heads = [
                        self.head(ORDERS, caught_up[ORDERS]),
                        self.head(PAYMENTS, caught_up[PAYMENTS]),
                        self.head(LOGISTICS, caught_up[LOGISTICS]),
                    ];
                    match merge::next_order_stage(&heads) {
                        Next::Wait => break,
                        Next::Record(rank) if matches!(heads[rank], Head::Event { occurred_at } if occurred_at > until) => {
                            break
                        }
                        Next::DeadLetter(rank) | Next::Record(rank) => rank,
                    }
                }
            };
            let Some(record) = self.buffers[rank].pop_front() else {
                break;
            };
            self.journal.push(Step::Take(rank));
            self.meta.next_offsets[rank] = record.offset + 1;
            self.meta.accounting[rank].consumed += 1;
            match record.decoded {
                Err((reason, detail)) => {
                    out.push(self.meta.accounting[rank].dead_letter(
                        reason,
                        &detail,
                        &record.origin,
                        record.key,
                        record.value,
                        self.bounds.dead_letter_bytes_max,
                    ));
                }
                Ok(event) => {
                    let parked = Parked {
                        parked_at: 0,
                        rank,
                        origin: record.origin,
                        key: record.key,
                        value: record.value,
                        event,
                    };
                    self.process(parked, out)?;
                }
            }
            processed += 1;
        }
        Ok(processed)
    }

    /// One valid record: fire what is due before it, move stream time, dedup, then fold.
    fn process(&mut self, mut record: Parked, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        let occurred_at = record.event.occurred_at();
        self.fire_due(occurred_at, out)?;
        self.meta.stream_time = self.meta.stream_time.max(occurred_at);
        let rank = record.rank;
        if self.dedup.is_duplicate(
            &mut self.db,
            rank as u8,
            record.event.event_id(),
            self.meta.stream_time,
        )? {
            self.meta.accounting[rank].duplicates += 1;
            return Ok(());
        }
        let order_id = match &record.event {
            OrderInput::Scan(scan) => return self.on_scan(scan, out),
            OrderInput::Order(OrderEvent {
                body: OrderBody::OrderPlaced(_),
                ..
            }) => return self.on_placed(record, out),
            OrderInput::Order(e) => e.order_id.clone(),
            OrderInput::Payment(e) => e.order_id.clone(),
        };
        match self.db.get::<Order>(Store::Orders, order_id.as_bytes())? {
            Some(mut order) => {
                let stamp = self.meta.stream_time;
                self.update(&mut order, &record, stamp, out)?;
                self.db.put(Store::Orders, order_id.into_bytes(), &order)?;
            }
            None => {
                record.parked_at = self.meta.stream_time;
                self.park(record, out)?;
            }
        }
        Ok(())
    }

    /// Applies a payment or cancel to a known order and counts the outcome.
    fn update(
        &mut self,
        order: &mut Order,
        record: &Parked,
        stamp: Millis,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), TaskError> {
        let was_pending = order.status == OrderStatus::PENDING_PAYMENT;
        let mut commands = std::mem::take(&mut self.scratch);
        let result = match &record.event {
            OrderInput::Payment(p) => match &p.body {
                PaymentBody::PaymentCaptured(_) => {
                    rules::capture(order, &p.event_id, stamp, &mut commands)
                }
                PaymentBody::PaymentFailed(_) => {
                    rules::fail(order, &p.event_id, stamp, &mut commands)
                }
            },
            OrderInput::Order(e) => {
                let shipped = self
                    .db
                    .get::<Tracking>(Store::Tracking, e.order_id.as_bytes())?
                    .is_some_and(|t| t.is_shipped());
                rules::cancel(order, &e.event_id, shipped, stamp, &mut commands)
            }
            // Scans and placements never reach here.
            OrderInput::Scan(_) => Ok(()),
        };
        let applied = result.is_ok();
        self.count(record.rank, result);
        if applied && self.retention.on() {
            // Only a paid order's finality depends on its tracking.
            let tracking = if order.status == OrderStatus::PAID {
                self.db
                    .get::<Tracking>(Store::Tracking, order.order_id.as_bytes())?
            } else {
                None
            };
            self.arm_if_final(&order.order_id, Some(order), tracking.as_ref())?;
        }
        if was_pending && order.status != OrderStatus::PENDING_PAYMENT {
            self.remove_timer(timer_key(
                order.deadline,
                TIMER_RESERVATION,
                &order.order_id,
            ))?;
        }
        self.emit_commands(&mut commands, out)?;
        self.scratch = commands;
        Ok(())
    }

    fn count(&mut self, rank: usize, result: Result<(), Ignored>) {
        match result {
            Ok(()) => self.meta.accounting[rank].applied += 1,
            Err(why) => self.meta.accounting[rank].count_ignored(why),
        }
    }

    fn on_placed(&mut self, record: Parked, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        let OrderInput::Order(
            event @ OrderEvent {
                order_id,
                body: OrderBody::OrderPlaced(placed),
                ..
            },
        ) = &record.event
        else {
            return Ok(());
        };
        let existing = self.db.get::<Order>(Store::Orders, order_id.as_bytes())?;
        let stamp = self.meta.stream_time;
        let mut commands = std::mem::take(&mut self.scratch);
        let placed = rules::place(
            existing.as_ref(),
            event,
            placed,
            self.reservation_ttl_ms,
            stamp,
            &mut commands,
        );
        self.emit_commands(&mut commands, out)?;
        self.scratch = commands;
        let mut order = match placed {
            Ok(order) => order,
            Err(why) => {
                self.meta.accounting[ORDERS].count_ignored(why);
                return Ok(());
            }
        };
        self.meta.accounting[ORDERS].applied += 1;
        self.add_timer(timer_key(order.deadline, TIMER_RESERVATION, order_id))?;
        // Events that arrived before their order are applied right after it, in park order.
        if let Some(parked) = self
            .db
            .get::<Vec<Parked>>(Store::Orphans, order_id.as_bytes())?
        {
            self.db
                .delete(Store::Orphans, order_id.as_bytes().to_vec())?;
            for p in &parked {
                self.remove_timer(timer_key(
                    p.parked_at.saturating_add(self.orphan_ttl_ms),
                    TIMER_ORPHAN,
                    order_id,
                ))?;
                let acc = &mut self.meta.accounting[p.rank];
                acc.parked = acc.parked.saturating_sub(1);
                self.update(&mut order, p, stamp, out)?;
            }
        }
        self.db
            .put(Store::Orders, order_id.as_bytes().to_vec(), &order)?;
        Ok(())
    }

    fn park(&mut self, record: Parked, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        let order_id = match &record.event {
            OrderInput::Order(e) => e.order_id.clone(),
            OrderInput::Payment(e) => e.order_id.clone(),
            OrderInput::Scan(e) => e.order_id.clone(),
        };
        let mut parked = self
            .db
            .get::<Vec<Parked>>(Store::Orphans, order_id.as_bytes())?
            .unwrap_or_default();
        // Checked here, not before dedup with the other rules: only now is the order known
        // to be missing. The event id stays seen, so a redelivery counts as a duplicate.
        if parked.len() >= self.bounds.orphans_per_order_max {
            let detail = format!(
                "order {order_id} already has {} events waiting for its OrderPlaced \
                 (limits.orphans_per_order_max)",
                parked.len()
            );
            out.push(self.meta.accounting[record.rank].dead_letter(
                DeadLetterReason::Validation,
                &detail,
                &record.origin,
                record.key,
                record.value,
                self.bounds.dead_letter_bytes_max,
            ));
            return Ok(());
        }
        self.meta.accounting[record.rank].parked += 1;
        self.add_timer(timer_key(
            record.parked_at.saturating_add(self.orphan_ttl_ms),
            TIMER_ORPHAN,
            &order_id,
        ))?;
        parked.push(record);
        self.db
            .put(Store::Orphans, order_id.into_bytes(), &parked)?;
        Ok(())
    }

    fn on_scan(
        &mut self,
        scan: &LogisticsEvent,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), TaskError> {
        let current = self
            .db
            .get::<Tracking>(Store::Tracking, scan.order_id.as_bytes())?;
        match tracking::scan(current.as_ref(), scan) {
            Ok((next, emitted)) => {
                self.meta.accounting[LOGISTICS].applied += 1;
                if self.retention.on() {
                    let order = self
                        .db
                        .get::<Order>(Store::Orders, scan.order_id.as_bytes())?;
                    self.arm_if_final(&scan.order_id, order.as_ref(), Some(&next))?;
                }
                self.db
                    .put(Store::Tracking, scan.order_id.as_bytes().to_vec(), &next)?;
                if let Some(status) = emitted {
                    self.meta.tracking_updates += 1;
                    let value = self.codec.encode(&status)?;
                    out.push(OutRecord::keyed(
                        OutTopic::TrackingStatus,
                        &status.order_id,
                        value,
                        scan.occurred_at,
                    ));
                }
            }
            Err(why) => self.meta.accounting[LOGISTICS].count_ignored(why),
        }
        Ok(())
    }

    fn add_timer(&mut self, k: Vec<u8>) -> Result<(), TaskError> {
        // `timers` mirrors the store, so a key it lacks is new to the store too.
        if self.timers.insert(k.clone()) {
            self.db.put_new(Store::Timers, k, &())?;
        }
        Ok(())
    }

    fn remove_timer(&mut self, k: Vec<u8>) -> Result<(), TaskError> {
        if self.timers.remove(&k) {
            self.db.delete(Store::Timers, k)?;
        }
        Ok(())
    }

    /// Fires every timer due before an event at `t` (instant D is due when D < t), in
    /// `(D, kind, order_id)` order: reservation timers before orphan expiries at the same D,
    /// and retention deadlines after both.
    fn fire_due(&mut self, t: Millis, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        loop {
            let timer_at = self.timers.first().and_then(|k| key::read_time(k));
            let forget_at = if self.retention.on() {
                self.retention.next_at(&self.db)?
            } else {
                None
            };
            // At the same instant the timers fire first.
            let forget_first = match (timer_at, forget_at) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(at), Some(f)) => f < at,
            };
            let next = if forget_first { forget_at } else { timer_at };
            let Some(at) = next.filter(|at| *at < t) else {
                break;
            };
            if forget_first {
                self.forget(out)?;
                continue;
            }
            let Some(k) = self.timers.pop_first() else {
                break;
            };
            self.db.delete(Store::Timers, k.clone())?;
            let kind = k.get(8).copied().unwrap_or(TIMER_RESERVATION);
            let order_id = String::from_utf8_lossy(k.get(9..).unwrap_or_default()).into_owned();
            if kind == TIMER_RESERVATION {
                self.expire(&order_id, at, out)?;
            } else {
                self.expire_orphans(&order_id, at, out)?;
            }
        }
        Ok(())
    }

    fn expire(
        &mut self,
        order_id: &str,
        at: Millis,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), TaskError> {
        let Some(mut order) = self.db.get::<Order>(Store::Orders, order_id.as_bytes())? else {
            return Ok(());
        };
        let mut commands = std::mem::take(&mut self.scratch);
        if let Some(expired) = rules::expire(&mut order, self.meta.stream_time, &mut commands) {
            self.meta.expiries += 1;
            let value = self.codec.encode(&expired)?;
            out.push(OutRecord::keyed(
                OutTopic::ReservationExpiry,
                order_id,
                value,
                expired.expired_at,
            ));
            self.db
                .put(Store::Orders, order_id.as_bytes().to_vec(), &order)?;
            // Final from its deadline on (not from whenever stream time moved last), so one
            // advance past it and two in a row arm the same retention.
            self.arm_if_final_at(order_id, Some(&order), None, at.max(self.meta.stream_time))?;
        }
        self.emit_commands(&mut commands, out)?;
        self.scratch = commands;
        Ok(())
    }

    /// After a change to `order_id`'s state: if it left the id final, the id is forgotten a
    /// retention from now unless something changes it again. `tracking` may be None where it
    /// cannot matter (any order but a paid one).
    fn arm_if_final(
        &mut self,
        order_id: &str,
        order: Option<&Order>,
        tracking: Option<&Tracking>,
    ) -> Result<(), TaskError> {
        self.arm_if_final_at(order_id, order, tracking, self.meta.stream_time)
    }

    fn arm_if_final_at(
        &mut self,
        order_id: &str,
        order: Option<&Order>,
        tracking: Option<&Tracking>,
        now: Millis,
    ) -> Result<(), TaskError> {
        if self.retention.on() && rules::is_final(order, tracking) {
            self.retention.arm(&mut self.db, order_id, now)?;
        }
        Ok(())
    }

    /// A retention deadline came due. If it is the id's latest and the id is still final, its
    /// order and tracking are deleted (tombstones on their changelogs) and the SKU stage is
    /// told to drop the order's reservations; an event for the id is then one for an unknown
    /// order. An earlier deadline, or an id no longer final, keeps everything.
    fn forget(&mut self, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        let Some(due) = self.retention.pop(&mut self.db)? else {
            return Ok(());
        };
        if !due.latest {
            return Ok(());
        }
        let id = due.order_id.as_bytes();
        let order = self.db.get::<Order>(Store::Orders, id)?;
        let tracking = self.db.get::<Tracking>(Store::Tracking, id)?;
        if !rules::is_final(order.as_ref(), tracking.as_ref()) {
            return Ok(());
        }
        if let Some(mut order) = order {
            let mut commands = std::mem::take(&mut self.scratch);
            rules::forget(&mut order, due.at, &mut commands);
            self.emit_commands(&mut commands, out)?;
            self.scratch = commands;
            self.db.delete(Store::Orders, id.to_vec())?;
        }
        if tracking.is_some() {
            self.db.delete(Store::Tracking, id.to_vec())?;
        }
        Ok(())
    }

    fn expire_orphans(
        &mut self,
        order_id: &str,
        at: Millis,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), TaskError> {
        let Some(parked) = self
            .db
            .get::<Vec<Parked>>(Store::Orphans, order_id.as_bytes())?
        else {
            return Ok(());
        };
        let (expired, kept): (Vec<Parked>, Vec<Parked>) = parked
            .into_iter()
            .partition(|p| p.parked_at.saturating_add(self.orphan_ttl_ms) <= at);
        for p in expired {
            let acc = &mut self.meta.accounting[p.rank];
            acc.parked = acc.parked.saturating_sub(1);
            let detail = format!(
                "no OrderPlaced for order {order_id} within orphan_ttl_ms {} of stream time",
                self.orphan_ttl_ms
            );
            out.push(acc.dead_letter(
                DeadLetterReason::Orphan,
                &detail,
                &p.origin,
                p.key,
                p.value,
                self.bounds.dead_letter_bytes_max,
            ));
        }
        if kept.is_empty() {
            self.db
                .delete(Store::Orphans, order_id.as_bytes().to_vec())?;
        } else {
            self.db
                .put(Store::Orphans, order_id.as_bytes().to_vec(), &kept)?;
        }
        Ok(())
    }

    fn emit_commands(
        &mut self,
        commands: &mut Vec<SkuCommand>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), TaskError> {
        for cmd in commands.drain(..) {
            self.meta.commands += 1;
            let value = self.codec.encode(&cmd)?;
            out.push(OutRecord::keyed(
                OutTopic::SkuCommands,
                &cmd.sku,
                value,
                cmd.occurred_at,
            ));
        }
        Ok(())
    }

    /// Moves stream time to `t` with no record: fires what is due before `t` first. Used by a
    /// bounded run's end and by live mode's wall-clock advance of an idle task.
    pub fn advance_to(&mut self, t: Millis, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        // Advances in a row are one advance to the latest (timers fire in the same order and
        // with the same stamps), so an idle task's journal stays one step long.
        match self.journal.last_mut() {
            Some(Step::Advance(last)) => *last = (*last).max(t),
            _ => self.journal.push(Step::Advance(t)),
        }
        self.fire_due(t, out)?;
        self.meta.stream_time = self.meta.stream_time.max(t);
        Ok(())
    }

    /// Ends a bounded run at `end` (the largest valid occurred_at of all inputs): what is due
    /// before it fires, and the next watermark tells the SKU stage no more commands will come.
    pub fn finish(&mut self, end: Millis, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        // A bounded run decides nothing by timing (its merge waits for the captured ends), so
        // whatever a dropped attempt did before its end, this end is the same.
        self.replay.clear();
        self.advance_to(end, out)?;
        self.meta.end_of_input = true;
        Ok(())
    }

    /// The work a commit does before the outputs are delivered: drops expired dedup ids and
    /// adds the watermark record, if it moved, behind the batch's commands.
    pub fn prepare_commit(&mut self, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        self.dedup.purge(&mut self.db, self.meta.stream_time)?;
        self.publish_watermark(out)?;
        Ok(())
    }

    /// Adds the watermark record behind the commands emitted so far, if stream time moved
    /// since the last one. Safe between commits too: every command stamped below it has been
    /// handed to the producer before it, in order, and a batch processed again after a failure
    /// re-sends identical commands, which the SKU stage recognises.
    pub fn publish_watermark(&mut self, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        let mark = (self.meta.stream_time, self.meta.end_of_input);
        if self.meta.published_watermark != Some(mark) {
            let watermark = Watermark {
                source_partition: self.partition as i32,
                stream_time: mark.0,
                end_of_input: mark.1,
            };
            out.push(OutRecord {
                topic: OutTopic::SkuCommands,
                route: Route::EveryPartition,
                key: None,
                value: Some(self.codec.encode(&watermark)?),
                headers: Vec::new(),
                cause_time: None,
                alert: None,
            });
            self.meta.published_watermark = Some(mark);
        }
        Ok(())
    }

    /// Writes the batch's state changes and the task's offsets in one atomic WriteBatch.
    /// Call only once the batch's outputs are acknowledged.
    pub fn commit(&mut self) -> Result<(), TaskError> {
        self.db.commit_with_meta(META_KEY, &self.meta)?;
        self.journal.clear();
        Ok(())
    }

    /// Puts the task's bookkeeping among the batch's writes, so the changelog sees the batch
    /// as it will commit; `commit` puts it again, unchanged.
    pub fn stage_meta(&mut self) -> Result<(), TaskError> {
        Ok(self.db.put(Store::Meta, META_KEY.to_vec(), &self.meta)?)
    }

    /// The task's database, for the runtime's changelog: it reads the batch's writes and adds
    /// its changelog positions to the commit.
    pub fn state_mut(&mut self) -> &mut TaskDb {
        &mut self.db
    }

    /// Unpaid orders holding stock: the reservation timers that have not fired. Counts the
    /// in-memory timer index, so call it per commit, not per record.
    pub fn active_reservations(&self) -> u64 {
        self.timers
            .iter()
            .filter(|k| k.get(8) == Some(&TIMER_RESERVATION))
            .count() as u64
    }

    pub fn order_view(&self, order_id: &str) -> Result<Option<OrderView>, TaskError> {
        order_view(&self.db, order_id)
    }

    pub fn order(&self, order_id: &str) -> Result<Option<Order>, TaskError> {
        Ok(self.db.get(Store::Orders, order_id.as_bytes())?)
    }

    pub fn tracking(&self, order_id: &str) -> Result<Option<Tracking>, TaskError> {
        Ok(self.db.get(Store::Tracking, order_id.as_bytes())?)
    }

    /// Every order with its tracking, in order_id order.
    pub fn orders(&self) -> Result<Vec<OrderView>, TaskError> {
        let mut all: std::collections::BTreeMap<String, (Option<Order>, Option<Tracking>)> =
            Default::default();
        for (k, order) in self.db.scan_typed::<Order>(Store::Orders, &[])? {
            all.entry(String::from_utf8_lossy(&k).into_owned())
                .or_default()
                .0 = Some(order);
        }
        for (k, t) in self.db.scan_typed::<Tracking>(Store::Tracking, &[])? {
            all.entry(String::from_utf8_lossy(&k).into_owned())
                .or_default()
                .1 = Some(t);
        }
        Ok(all
            .into_iter()
            .map(|(order_id, (order, tracking))| OrderView {
                order_id,
                order,
                tracking,
            })
            .collect())
    }

    /// Order ids with events still parked, and how many.
    pub fn parked(&self) -> Result<Vec<(String, usize)>, TaskError> {
        let mut out = Vec::new();
        for (k, parked) in self.db.scan_typed::<Vec<Parked>>(Store::Orphans, &[])? {
            out.push((String::from_utf8_lossy(&k).into_owned(), parked.len()));
        }
        Ok(out)
    }
}

impl Input for OrderTask {
    fn is_full(&self, rank: usize) -> bool {
        self.buffers[rank].len() >= self.buffer_records_max
    }

    fn push(
        &mut self,
        rank: usize,
        offset: i64,
        origin_offset: i64,
        timestamp_ms: Option<Millis>,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) {
        let decoded = decode_input(
            &self.codec,
            &self.bounds,
            rank,
            key.as_deref(),
            value.as_deref(),
            timestamp_ms,
        );
        self.buffers[rank].push_back(Buffered {
            offset,
            origin: Origin {
                topic: self.topics[rank].clone(),
                partition: self.partition,
                offset: origin_offset,
            },
            key,
            value,
            decoded,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::fixtures::{captured, placed};

    #[test]
    fn an_aligned_task_stops_before_the_first_record_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let codec = Codec::new().unwrap();
        let topics = ["orders".into(), "payments".into(), "logistics".into()];
        let mut task =
            OrderTask::open(dir.path(), 0, topics, codec.clone(), &Config::default()).unwrap();
        for i in 0..5 {
            let value = codec.encode(&placed(i, 1_700_000_000_000 + i)).unwrap();
            task.push(
                ORDERS,
                i,
                i,
                None,
                Some(format!("o-{i}").into_bytes()),
                Some(value),
            );
        }
        let caught_up = [false, true, true];
        let mut out = Vec::new();
        // Records at +0, +1, +2 are within the bound, +3 is past it.
        assert_eq!(task.position(caught_up), Some(1_700_000_000_000));
        assert_eq!(
            task.run(caught_up, 100, 1_700_000_000_002, &mut out)
                .unwrap(),
            3
        );
        assert_eq!(task.meta().stream_time, 1_700_000_000_002);
        assert_eq!(task.next_offset(ORDERS), 3);
        // Its position is its next record, past its stream time: as the slowest task, its
        // bound admits that record.
        assert_eq!(task.position(caught_up), Some(1_700_000_000_003));
        assert_eq!(task.run(caught_up, 100, Millis::MAX, &mut out).unwrap(), 2);
        assert_eq!(task.next_offset(ORDERS), 5);
        assert_eq!(task.position([true; INPUTS]), None);
    }

    /// A retry takes a dropped attempt's steps again. The first attempt, in live mode, advanced
    /// stream time past o-1's deadline before its capture arrived (expiry, Release, then a late
    /// capture); the retry finds both records fetched at once and, deciding afresh, would see
    /// the capture on time and send no expiry. Replaying, it sends the same records again.
    #[test]
    fn a_retry_takes_the_dropped_attempts_steps_again() {
        let dir = tempfile::tempdir().unwrap();
        let codec = Codec::new().unwrap();
        let config = Config::default();
        let open = || {
            let topics = ["orders".into(), "payments".into(), "logistics".into()];
            OrderTask::open(dir.path(), 0, topics, codec.clone(), &config).unwrap()
        };
        let t0 = 1_700_000_000_000;
        let placed_value = codec.encode(&placed(1, t0)).unwrap();
        let capture = captured(1, t0 + 1_000);
        let capture_value = codec.encode(&capture).unwrap();
        let key = Some(b"o-1".to_vec());
        let bytes = |out: &[OutRecord]| -> Vec<Vec<u8>> {
            out.iter().filter_map(|r| r.value.clone()).collect()
        };
        let all = [true; INPUTS];

        let mut first = open();
        let mut sent = Vec::new();
        first.push(ORDERS, 0, 0, None, key.clone(), Some(placed_value.clone()));
        first.run(all, 100, Millis::MAX, &mut sent).unwrap();
        // Idle: the wall clock moves stream time past the deadline.
        first.advance_to(t0 + 400_000, &mut sent).unwrap();
        first.push(
            PAYMENTS,
            0,
            0,
            None,
            key.clone(),
            Some(capture_value.clone()),
        );
        first.run(all, 100, Millis::MAX, &mut sent).unwrap();
        assert_eq!(first.meta().expiries, 1);
        let steps = first.take_journal();
        drop(first);

        let retry = |steps: Option<Vec<Step>>| {
            let mut task = open();
            if let Some(steps) = steps {
                task.replay(steps);
            }
            let mut out = Vec::new();
            task.push(ORDERS, 0, 0, None, key.clone(), Some(placed_value.clone()));
            task.push(
                PAYMENTS,
                0,
                0,
                None,
                key.clone(),
                Some(capture_value.clone()),
            );
            task.run(all, 100, Millis::MAX, &mut out).unwrap();
            assert!(!task.replaying());
            out
        };
        assert_eq!(bytes(&retry(Some(steps))), bytes(&sent));
        // Deciding afresh, the retry would contradict what the first attempt already sent.
        assert_ne!(bytes(&retry(None)), bytes(&sent));
    }

    /// Advances in a row are journaled as one, to the latest: an idle task's journal stays one
    /// step long, and replaying that one step sends what the several did, retention included
    /// (an expiry arms its retention from the deadline, not from the last advance).
    #[test]
    fn advances_in_a_row_are_one_step_and_decide_the_same() {
        let codec = Codec::new().unwrap();
        let mut config = Config::default();
        config.rules.final_retention_ms = 60_000;
        let t0 = 1_700_000_000_000;
        let deadline = t0 + config.rules.reservation_ttl_ms;
        let run = |advances: &[Millis]| {
            let dir = tempfile::tempdir().unwrap();
            let topics = ["orders".into(), "payments".into(), "logistics".into()];
            let mut task = OrderTask::open(dir.path(), 0, topics, codec.clone(), &config).unwrap();
            let mut out = Vec::new();
            let value = codec.encode(&placed(1, t0)).unwrap();
            task.push(ORDERS, 0, 0, None, Some(b"o-1".to_vec()), Some(value));
            task.run([true; INPUTS], 100, Millis::MAX, &mut out)
                .unwrap();
            task.commit().unwrap();
            for t in advances {
                task.advance_to(*t, &mut out).unwrap();
            }
            let journal = task.take_journal();
            // Past the retention: o-1 is forgotten, its Forget stamped from where it was armed.
            task.advance_to(deadline + 120_000, &mut out).unwrap();
            let values: Vec<Vec<u8>> = out.iter().filter_map(|r| r.value.clone()).collect();
            (journal, values)
        };
        let (split, split_out) = run(&[deadline - 100, deadline + 100]);
        let (single, single_out) = run(&[deadline + 100]);
        assert_eq!(split, vec![Step::Advance(deadline + 100)]);
        assert_eq!(split, single);
        assert_eq!(split_out, single_out);
    }
}
