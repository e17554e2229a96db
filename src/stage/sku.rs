//! A SKU-stage task: partition p of `inventory` and `<app>.sku-commands`. It owns SKU totals,
//! reservations, the commands waiting for the order stage's watermark, and the order in which
//! they are applied: first come, first served by event time, not by arrival.
//!
//! Waiting commands live in memory only, never in a store or a changelog: the command topic
//! already holds them. A commit records the offset of the earliest one still waiting, and an
//! opened task reads the topic again from there, which rebuilds the same set. A command is
//! written to the broker once, not three times (the command, its pending entry, the entry's
//! delete), and that was a quarter of everything orderfold wrote to the broker.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::{Codec, DecodeError, RecordKind};
use crate::config::Config;
use crate::event::{
    AlertKind, InventoryEvent, Millis, OversellAlert, SkuCommand, SkuCommandKind, Watermark,
};
use crate::fold::sku::{self as rules, Reservation, Sku};
use crate::ids;
use crate::merge::{self, SkuNext};
use crate::sink::{DeadLetterReason, Origin, OutRecord, OutTopic};
use crate::stage::{dedup_key, Accounting, Buffered, Dedup, Input, TaskError};
use crate::state::{key, KeyValue, StateError, StateOptions, Store, TaskDb};
use crate::validate::{self, Bounds};

pub const INVENTORY: usize = 0;
pub const COMMANDS: usize = 1;
pub const INPUTS: usize = 2;

/// A record of the repartition topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkuStageRecord {
    Command(SkuCommand),
    Watermark(Watermark),
}

fn decode_error(e: DecodeError) -> (DeadLetterReason, String) {
    match e {
        DecodeError::Decode(d) => (DeadLetterReason::Decode, d),
        DecodeError::UnknownSchema(d) => (DeadLetterReason::Schema, d),
    }
}

/// Decodes and validates one inventory record; `timestamp_ms` is its Kafka timestamp.
pub fn decode_inventory(
    codec: &Codec,
    bounds: &Bounds,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    timestamp_ms: Option<Millis>,
) -> Result<InventoryEvent, (DeadLetterReason, String)> {
    let invalid = |v| (DeadLetterReason::Validation, v);
    let bytes = value.ok_or((DeadLetterReason::Decode, "record has no value".to_string()))?;
    bounds.record_size(bytes).map_err(invalid)?;
    let e: InventoryEvent = codec.decode(bytes).map_err(decode_error)?;
    validate::inventory(key, &e, bounds).map_err(invalid)?;
    bounds.skew(e.occurred_at, timestamp_ms).map_err(invalid)?;
    Ok(e)
}

pub fn decode_command(
    codec: &Codec,
    value: Option<&[u8]>,
) -> Result<SkuStageRecord, (DeadLetterReason, String)> {
    let bytes = value.ok_or((DeadLetterReason::Decode, "record has no value".to_string()))?;
    match codec.kind_of(bytes).map_err(decode_error)? {
        RecordKind::Watermark => Ok(SkuStageRecord::Watermark(
            codec.decode(bytes).map_err(decode_error)?,
        )),
        _ => Ok(SkuStageRecord::Command(
            codec.decode(bytes).map_err(decode_error)?,
        )),
    }
}

/// The key of a pending command: its place in the SKU stage's application order.
fn pending_key(cmd: &SkuCommand) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + cmd.order_id.len() + cmd.sku.len());
    key::push_time(&mut k, cmd.occurred_at);
    key::push_str(&mut k, &cmd.order_id);
    key::push_str(&mut k, &cmd.sku);
    k.extend_from_slice(&((cmd.sequence as u32) ^ (1 << 31)).to_be_bytes());
    k
}

fn reservation_key(sku: &str, order_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + sku.len() + order_id.len());
    key::push_str(&mut k, sku);
    k.extend_from_slice(order_id.as_bytes());
    k
}

/// A reservation as stored, with the command kinds already applied to it: each kind happens at
/// most once per (order, sku), so this is the SKU stage's dedup by command id, kept in the
/// record the command reads anyway and for as long as the reservation lives.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StoredReservation {
    reservation: Reservation,
    applied_kinds: u8,
}

fn kind_bit(kind: SkuCommandKind) -> u8 {
    match kind {
        SkuCommandKind::Reserve => 1,
        SkuCommandKind::Commit => 2,
        SkuCommandKind::Release => 4,
        SkuCommandKind::Restock => 8,
        SkuCommandKind::Forget => 16,
    }
}

/// The dedup entry a Forget leaves for its (order, sku), valued at the Forget's time. It
/// lives among the command topic's ids and is purged with them.
fn forget_marker(cmd: &SkuCommand) -> Vec<u8> {
    let id = ids::command_id(SkuCommandKind::Forget, &cmd.order_id, &cmd.sku);
    dedup_key(COMMANDS as u8, &id)
}

/// What the task commits beside its stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkuMeta {
    /// Where each input resumes. For `COMMANDS` that is the earliest command still waiting at
    /// the commit (or `commands_counted_to` when none is): the task reads the waiting ones again.
    pub next_offsets: [i64; INPUTS],
    /// One past the last command-topic record the task has counted and acted on. A record
    /// below it, read again after a reopen, only rebuilds the waiting set.
    pub commands_counted_to: i64,
    /// Largest occurred_at applied; dedup retention counts in it.
    pub stream_time: Millis,
    /// Latest watermark per order partition: (stream time, end of input).
    pub watermarks: BTreeMap<u32, (Millis, bool)>,
    /// For `COMMANDS`, `parked` counts commands waiting for the watermark.
    pub accounting: [Accounting; INPUTS],
    pub alerts: BTreeMap<String, u64>,
    /// Commands that arrived behind the watermark (late data) and were applied at once.
    pub late_commands: u64,
    /// Commands applied ahead of the watermark because `pending_commands_max` was reached and
    /// nothing else could move: the overload valve that keeps a stalled order partition from
    /// stalling every SKU.
    pub forced_commands: u64,
}

impl Default for SkuMeta {
    fn default() -> Self {
        SkuMeta {
            next_offsets: [0; INPUTS],
            commands_counted_to: 0,
            stream_time: Millis::MIN,
            watermarks: BTreeMap::new(),
            accounting: Default::default(),
            alerts: BTreeMap::new(),
            late_commands: 0,
            forced_commands: 0,
        }
    }
}

const META_KEY: &[u8] = b"sku-task";

/// A SKU with its stock numbers and reservations, as `inspect` and `simulate` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuView {
    pub sku: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub on_hand_by_warehouse: BTreeMap<String, i64>,
    pub net_sold: i64,
    pub reservations: BTreeMap<String, Reservation>,
}

/// A page of one SKU's view: its numbers, and its reservations after a given order id, at most
/// a page's worth. `next_after` is the order id to ask after for the next page (absent on the
/// last one, so a SKU that fits one page reads exactly as `inspect sku` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkuPage {
    #[serde(flatten)]
    pub view: SkuView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// One SKU's view as `db` holds it, every reservation: what `inspect sku` prints.
pub fn sku_view(db: &TaskDb, sku: &str) -> Result<Option<SkuView>, TaskError> {
    let mut prefix = Vec::new();
    key::push_str(&mut prefix, sku);
    let reservations = |db: &TaskDb| db.scan_prefix(Store::Reservations, &prefix);
    sku_view_of(db, sku, &prefix, reservations)
}

/// One page of a SKU's view, reading at most `limit` reservations (those after order id
/// `after`) from committed state: what `/state/sku/{sku}` answers. A SKU with a million
/// reservations costs a query no more than a page.
pub fn sku_page(
    db: &TaskDb,
    sku: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<SkuPage>, TaskError> {
    let mut prefix = Vec::new();
    key::push_str(&mut prefix, sku);
    let after = after.map(str::as_bytes);
    // One more than the page says whether another page follows.
    let page = |db: &TaskDb| {
        db.committed_prefix_page(Store::Reservations, &prefix, after, limit.saturating_add(1))
    };
    let Some(mut view) = sku_view_of(db, sku, &prefix, page)? else {
        return Ok(None);
    };
    let next_after = if view.reservations.len() > limit {
        view.reservations.pop_last();
        view.reservations.keys().next_back().cloned()
    } else {
        None
    };
    Ok(Some(SkuPage { view, next_after }))
}

fn sku_view_of(
    db: &TaskDb,
    sku: &str,
    prefix: &[u8],
    reservations: impl FnOnce(&TaskDb) -> Result<Vec<KeyValue>, StateError>,
) -> Result<Option<SkuView>, TaskError> {
    let Some(state) = db.get::<Sku>(Store::Skus, sku.as_bytes())? else {
        return Ok(None);
    };
    let reservations = reservations(db)?
        .into_iter()
        .map(|(k, v)| {
            let r: StoredReservation =
                postcard::from_bytes(&v).map_err(|source| StateError::Corrupt {
                    store: Store::Reservations.name(),
                    source,
                })?;
            Ok((
                String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                r.reservation,
            ))
        })
        .collect::<Result<_, StateError>>()?;
    Ok(Some(SkuView {
        sku: sku.to_string(),
        on_hand: state.on_hand(),
        reserved: state.reserved,
        available: state.available(),
        on_hand_by_warehouse: state.on_hand_by_warehouse,
        net_sold: state.net_sold,
        reservations,
    }))
}

/// Every SKU of `tasks`, in sku order: the stage's whole state, as `inspect` and tests see it.
pub fn skus_of(tasks: &[SkuTask]) -> Result<Vec<SkuView>, TaskError> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.skus()?);
    }
    all.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(all)
}

/// One SKU-stage task.
pub struct SkuTask {
    partition: u32,
    topics: [String; INPUTS],
    order_partitions: u32,
    db: TaskDb,
    codec: Arc<Codec>,
    dedup: Dedup,
    buffer_records_max: usize,
    /// The config's bounds on an input record.
    bounds: Bounds,
    pending_commands_max: usize,
    meta: SkuMeta,
    inventory: VecDeque<Buffered<InventoryEvent>>,
    commands: VecDeque<Buffered<SkuStageRecord>>,
    /// Commands waiting for the watermark, in application order, with their offsets.
    pending: BTreeMap<Vec<u8>, (SkuCommand, i64)>,
    /// The offsets of `pending`: the first is where a reopened task must read again from.
    pending_offsets: BTreeSet<i64>,
    /// The next command-topic offset the task expects.
    commands_read_to: i64,
    /// Something beyond watermarks happened since the last commit: a command or inventory
    /// record read, applied or dead-lettered. Watermarks alone need no commit (a reopened
    /// task reads them again), so an idle instance does not write a checkpoint every second.
    changed: bool,
    /// `rules.final_retention_ms` is on: the order stage may forget orders, so a command that
    /// finds no reservation may be a dropped attempt's copy of one sent before the Forget.
    forgets: bool,
}

impl SkuTask {
    /// Opens the task's state in `dir`. `order_partitions` is how many order tasks send
    /// watermarks; commands wait until every one of them has.
    pub fn open(
        dir: &Path,
        partition: u32,
        topics: [String; INPUTS],
        order_partitions: u32,
        codec: Arc<Codec>,
        config: &Config,
    ) -> Result<SkuTask, TaskError> {
        let db = TaskDb::open(dir, &Store::SKU_STAGE, &StateOptions::from_config(config))?;
        Self::from_db(db, partition, topics, order_partitions, codec, config)
    }

    /// The task over an opened (and, by the runtime, restored) database.
    pub fn from_db(
        db: TaskDb,
        partition: u32,
        topics: [String; INPUTS],
        order_partitions: u32,
        codec: Arc<Codec>,
        config: &Config,
    ) -> Result<SkuTask, TaskError> {
        let meta = Self::committed_meta(&db)?;
        let commands_read_to = meta.next_offsets[COMMANDS];
        Ok(SkuTask {
            partition,
            topics,
            order_partitions,
            db,
            codec,
            dedup: Dedup::new(
                config.rules.dedup_retention_ms,
                config.limits.dedup_purge_per_commit_max,
            ),
            buffer_records_max: config.limits.buffer_records_max,
            bounds: Bounds::from_config(config),
            pending_commands_max: config.limits.pending_commands_max,
            meta,
            inventory: VecDeque::new(),
            commands: VecDeque::new(),
            pending: BTreeMap::new(),
            pending_offsets: BTreeSet::new(),
            commands_read_to,
            changed: false,
            forgets: config.rules.final_retention_ms > 0,
        })
    }

    /// The meta of the last commit, without any order partition's end of input: an end belongs
    /// to the bounded run that announced it. A task that kept it would let the next bounded run
    /// finish before reading the commands that run sends (its watermark already at the end),
    /// and would apply a live run's commands in arrival order until it read the take-back.
    /// Each run's order stage announces its own end again.
    fn committed_meta(db: &TaskDb) -> Result<SkuMeta, TaskError> {
        let mut meta = db
            .get::<SkuMeta>(Store::Meta, META_KEY)?
            .unwrap_or_default();
        for (_, end) in meta.watermarks.values_mut() {
            *end = false;
        }
        Ok(meta)
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn meta(&self) -> &SkuMeta {
        &self.meta
    }

    pub fn next_offset(&self, input: usize) -> i64 {
        if input == COMMANDS {
            self.commands_read_to
        } else {
            self.meta.next_offsets[input]
        }
    }

    /// Sets where a task that has processed nothing starts its inputs (a replay from a
    /// timestamp or an offsets file). False, and nothing changes, once it has processed.
    pub fn start_at(&mut self, offsets: [i64; INPUTS]) -> bool {
        if self.meta.next_offsets.iter().any(|o| *o != 0) {
            return false;
        }
        self.meta.next_offsets = offsets;
        self.meta.commands_counted_to = offsets[COMMANDS];
        self.commands_read_to = offsets[COMMANDS];
        true
    }

    pub fn buffered(&self, input: usize) -> usize {
        if input == INVENTORY {
            self.inventory.len()
        } else {
            self.commands.len()
        }
    }

    pub fn pending_commands(&self) -> usize {
        self.pending.len()
    }

    /// True while a reopened task is still reading back the commands that waited at its last
    /// commit: until then it does not know all of them.
    pub fn rebuilding(&self) -> bool {
        self.commands_read_to < self.meta.commands_counted_to
    }

    /// The minimum watermark over all order partitions: commands stamped below it are
    /// complete. Until every order partition has spoken it is `Millis::MIN`.
    pub fn watermark(&self) -> Millis {
        if (self.meta.watermarks.len() as u32) < self.order_partitions {
            return Millis::MIN;
        }
        self.meta
            .watermarks
            .values()
            .map(|&(t, end)| if end { Millis::MAX } else { t })
            .min()
            .unwrap_or(Millis::MIN)
    }

    /// Reads the command partition into the pending set, then applies inventory records and
    /// pending commands in SKU-stage order while they are ready. `inventory_caught_up` says the
    /// inventory partition has nothing beyond what is buffered as far as anyone knows: with
    /// its buffer empty and more to read, the next inventory record's time is unknown and a
    /// command that might have to follow it waits, so results never depend on how far the
    /// consumer happened to fetch. Returns records consumed or applied (at most `max_records`).
    pub fn run(
        &mut self,
        inventory_caught_up: bool,
        max_records: usize,
        out: &mut Vec<OutRecord>,
    ) -> Result<usize, TaskError> {
        let mut done = 0;
        // Reading back after a reopen is not held to either limit, nor counted as processing
        // (it is not new work, and a task reopened before every commit would otherwise never
        // look idle): it only rebuilds the pending set the task committed, which the limit
        // already bounded, and a task that stopped partway would start it over if reopened
        // before its next commit.
        // Past `pending_commands_max` only what takes no room is read: a watermark (it may
        // be what makes the earliest pending command ready) or a record to dead-letter.
        while self.rebuilding()
            || (done < max_records
                && (self.pending.len() < self.pending_commands_max || !self.command_next()))
        {
            let Some(record) = self.commands.pop_front() else {
                break;
            };
            if !self.rebuilding() {
                done += 1;
            }
            self.accept_command(record, out)?;
        }
        if self.rebuilding() {
            // Still reading back the commands that waited at the last commit: the earliest
            // of them may not be back yet, and nothing may apply ahead of it.
            return Ok(done);
        }
        while done < max_records {
            if let Some(Buffered {
                decoded: Err(_), ..
            }) = self.inventory.front()
            {
                if let Some(record) = self.inventory.pop_front() {
                    self.dead_letter_inventory(record, out);
                    done += 1;
                }
                continue;
            }
            if self.inventory.is_empty() && !inventory_caught_up {
                break;
            }
            let inventory_at = self
                .inventory
                .front()
                .and_then(|b| b.decoded.as_ref().ok())
                .map(|e| e.occurred_at);
            let command_at = self.pending.values().next().map(|(c, _)| c.occurred_at);
            match merge::next_sku_stage(inventory_at, command_at, self.watermark()) {
                SkuNext::Inventory => self.apply_inventory(out)?,
                SkuNext::Command => self.apply_next_command(out)?,
                // The valve: the pending set is full and the next record is a command it has no
                // room for, so no watermark can arrive to make the earliest one ready. Anything
                // else (a watermark still to read, a batch budget spent) waits for the next round.
                SkuNext::Wait
                    if self.pending.len() >= self.pending_commands_max && self.command_next() =>
                {
                    self.meta.forced_commands += 1;
                    self.apply_next_command(out)?;
                }
                SkuNext::Wait => break,
            }
            done += 1;
        }
        Ok(done)
    }

    /// True when the next record of the command partition is a readable command: the one
    /// kind of record that takes room in the pending set.
    fn command_next(&self) -> bool {
        matches!(
            self.commands.front(),
            Some(Buffered {
                decoded: Ok(SkuStageRecord::Command(_)),
                ..
            })
        )
    }

    fn accept_command(
        &mut self,
        record: Buffered<SkuStageRecord>,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), TaskError> {
        self.commands_read_to = record.offset + 1;
        if record.offset < self.meta.commands_counted_to {
            self.rebuild_pending(record)?;
            if !self.rebuilding() {
                self.settle_parked();
            }
            return Ok(());
        }
        self.meta.commands_counted_to = record.offset + 1;
        self.changed |= !matches!(record.decoded, Ok(SkuStageRecord::Watermark(_)));
        let acc = &mut self.meta.accounting[COMMANDS];
        acc.consumed += 1;
        match record.decoded {
            Err((reason, detail)) => {
                out.push(acc.dead_letter(
                    reason,
                    &detail,
                    &record.origin,
                    record.key,
                    record.value,
                    self.bounds.dead_letter_bytes_max,
                ));
            }
            Ok(SkuStageRecord::Watermark(w)) => {
                acc.applied += 1;
                let entry = self
                    .meta
                    .watermarks
                    .entry(w.source_partition.max(0) as u32)
                    .or_insert((Millis::MIN, false));
                // A replayed batch may resend an older watermark: time never moves backwards,
                // and an older watermark says nothing about the end. A newer one does: an end
                // of input is taken back by the next run's first watermark (`OrderTask::run`).
                let end = if w.stream_time >= entry.0 {
                    w.end_of_input
                } else {
                    entry.1
                };
                *entry = (entry.0.max(w.stream_time), end);
            }
            Ok(SkuStageRecord::Command(cmd)) => {
                // A command delivered again before it applied has the same place in the order:
                // it is the same pending entry. One delivered after it applied is recognised
                // by its reservation when its turn comes.
                let k = pending_key(&cmd);
                if self.pending.contains_key(&k) {
                    self.meta.accounting[COMMANDS].duplicates += 1;
                    return Ok(());
                }
                if cmd.occurred_at < self.watermark() {
                    self.meta.late_commands += 1;
                }
                self.meta.accounting[COMMANDS].parked += 1;
                self.wait(k, cmd, record.offset);
            }
        }
        Ok(())
    }

    /// Once read back, the pending set is every command counted as parked at the commit, but
    /// for copies of an applied command that were waiting to be recognised: reading back skips
    /// them (their reservation says applied), so they are counted now, as the duplicates they
    /// would have been found to be.
    fn settle_parked(&mut self) {
        let acc = &mut self.meta.accounting[COMMANDS];
        let skipped = acc.parked.saturating_sub(self.pending.len() as u64);
        acc.duplicates += skipped;
        acc.parked -= skipped;
    }

    fn wait(&mut self, k: Vec<u8>, cmd: SkuCommand, offset: i64) {
        self.pending.insert(k, (cmd, offset));
        self.pending_offsets.insert(offset);
    }

    /// A command-topic record the task counted before its last commit, read again after a
    /// reopen: it was counted, dead-lettered or taken as a watermark then. A command among
    /// them is either applied (its reservation says so) or was waiting at the commit, and
    /// only then waits again. A copy of a waiting command is the same entry, as it was.
    fn rebuild_pending(&mut self, record: Buffered<SkuStageRecord>) -> Result<(), TaskError> {
        let Ok(SkuStageRecord::Command(cmd)) = record.decoded else {
            return Ok(());
        };
        let k = pending_key(&cmd);
        if self.pending.contains_key(&k) {
            return Ok(());
        }
        let applied = self
            .db
            .get::<StoredReservation>(
                Store::Reservations,
                &reservation_key(&cmd.sku, &cmd.order_id),
            )?
            .is_some_and(|s| s.applied_kinds & kind_bit(cmd.kind) != 0);
        if !applied {
            self.wait(k, cmd, record.offset);
        }
        Ok(())
    }

    fn dead_letter_inventory(
        &mut self,
        record: Buffered<InventoryEvent>,
        out: &mut Vec<OutRecord>,
    ) {
        self.meta.next_offsets[INVENTORY] = record.offset + 1;
        self.changed = true;
        let acc = &mut self.meta.accounting[INVENTORY];
        acc.consumed += 1;
        if let Err((reason, detail)) = record.decoded {
            out.push(acc.dead_letter(
                reason,
                &detail,
                &record.origin,
                record.key,
                record.value,
                self.bounds.dead_letter_bytes_max,
            ));
        }
    }

    fn sku(&self, sku: &str) -> Result<Sku, TaskError> {
        Ok(self
            .db
            .get::<Sku>(Store::Skus, sku.as_bytes())?
            .unwrap_or_default())
    }

    fn emit_alert(
        &mut self,
        alert: OversellAlert,
        out: &mut Vec<OutRecord>,
    ) -> Result<(), TaskError> {
        *self
            .meta
            .alerts
            .entry(alert.kind.label().to_string())
            .or_default() += 1;
        let value = self.codec.encode(&alert)?;
        let mut record = OutRecord::keyed(
            OutTopic::OversellAlerts,
            &alert.sku,
            value,
            alert.occurred_at,
        );
        record.alert = Some(alert.kind);
        out.push(record);
        Ok(())
    }

    fn apply_inventory(&mut self, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        self.changed = true;
        let Some(record) = self.inventory.pop_front() else {
            return Ok(());
        };
        self.meta.next_offsets[INVENTORY] = record.offset + 1;
        self.meta.accounting[INVENTORY].consumed += 1;
        let Ok(event) = record.decoded else {
            return Ok(());
        };
        self.meta.stream_time = self.meta.stream_time.max(event.occurred_at);
        if self.dedup.is_duplicate(
            &mut self.db,
            INVENTORY as u8,
            &event.event_id,
            self.meta.stream_time,
        )? {
            self.meta.accounting[INVENTORY].duplicates += 1;
            return Ok(());
        }
        let mut sku = self.sku(&event.sku)?;
        let warehouses = sku.on_hand_by_warehouse.len();
        if warehouses >= self.bounds.warehouses_per_sku_max
            && !sku.on_hand_by_warehouse.contains_key(&event.warehouse_id)
        {
            let detail = format!(
                "sku {} already holds stock in {warehouses} warehouses \
                 (limits.warehouses_per_sku_max); {} would be one more",
                event.sku, event.warehouse_id
            );
            let acc = &mut self.meta.accounting[INVENTORY];
            out.push(acc.dead_letter(
                DeadLetterReason::Validation,
                &detail,
                &record.origin,
                record.key,
                record.value,
                self.bounds.dead_letter_bytes_max,
            ));
            return Ok(());
        }
        let alert = rules::apply_inventory(&mut sku, &event);
        self.db
            .put(Store::Skus, event.sku.as_bytes().to_vec(), &sku)?;
        self.meta.accounting[INVENTORY].applied += 1;
        if let Some(alert) = alert {
            self.emit_alert(alert, out)?;
        }
        Ok(())
    }

    fn apply_next_command(&mut self, out: &mut Vec<OutRecord>) -> Result<(), TaskError> {
        self.changed = true;
        let Some((_, (cmd, offset))) = self.pending.pop_first() else {
            return Ok(());
        };
        self.pending_offsets.remove(&offset);
        self.meta.stream_time = self.meta.stream_time.max(cmd.occurred_at);
        let rkey = reservation_key(&cmd.sku, &cmd.order_id);
        let stored = self
            .db
            .get::<StoredReservation>(Store::Reservations, &rkey)?;
        let acc = &mut self.meta.accounting[COMMANDS];
        acc.parked = acc.parked.saturating_sub(1);
        let bit = kind_bit(cmd.kind);
        if stored.is_some_and(|s| s.applied_kinds & bit != 0) {
            acc.duplicates += 1;
            return Ok(());
        }
        // A forgotten reservation leaves a marker for `dedup_retention_ms`: the time of its
        // Forget, above every command sent for the order before it. A command below it that
        // finds no reservation is a copy of one applied before the Forget (a dropped attempt's,
        // read late), and must not reserve or sell again. A Forget that finds none has nothing
        // left to forget.
        if stored.is_none() && self.forgets {
            let forgotten_at = self.db.get::<Millis>(Store::Dedup, &forget_marker(&cmd))?;
            if cmd.kind == SkuCommandKind::Forget
                || forgotten_at.is_some_and(|at| cmd.occurred_at < at)
            {
                acc.duplicates += 1;
                return Ok(());
            }
        }
        acc.applied += 1;
        let mut sku = self.sku(&cmd.sku)?;
        let effect = rules::apply_command(&mut sku, stored.map(|s| s.reservation), &cmd);
        if effect.forget {
            self.db.delete(Store::Reservations, rkey)?;
            self.db
                .put(Store::Dedup, forget_marker(&cmd), &cmd.occurred_at)?;
            return Ok(());
        }
        // Every change to the SKU comes with a change to the reservation.
        if effect.reservation.is_some() {
            self.db
                .put(Store::Skus, cmd.sku.as_bytes().to_vec(), &sku)?;
        }
        if let Some(reservation) = effect.reservation.or(stored.map(|s| s.reservation)) {
            let applied_kinds = stored.map_or(0, |s| s.applied_kinds) | bit;
            self.db.put(
                Store::Reservations,
                rkey,
                &StoredReservation {
                    reservation,
                    applied_kinds,
                },
            )?;
        }
        if let Some(alert) = effect.alert {
            self.emit_alert(alert, out)?;
        }
        Ok(())
    }

    /// Drops expired dedup ids; the SKU stage has nothing to send at commit.
    pub fn prepare_commit(&mut self) -> Result<(), TaskError> {
        self.dedup.purge(&mut self.db, self.meta.stream_time)?;
        Ok(())
    }

    /// Writes the batch's state changes and the task's offsets in one atomic WriteBatch.
    pub fn commit(&mut self) -> Result<(), TaskError> {
        self.settle_commands_offset();
        self.db.commit_with_meta(META_KEY, &self.meta)?;
        self.changed = false;
        Ok(())
    }

    /// Whether the task has anything to commit beyond watermarks (see `changed`).
    pub fn changed_since_commit(&self) -> bool {
        self.changed
    }

    /// Puts the task's bookkeeping among the batch's writes, so the changelog sees the batch
    /// as it will commit; `commit` puts it again, unchanged.
    pub fn stage_meta(&mut self) -> Result<(), TaskError> {
        self.settle_commands_offset();
        Ok(self.db.put(Store::Meta, META_KEY.to_vec(), &self.meta)?)
    }

    /// A reopened task reads the command topic again from its earliest waiting command.
    fn settle_commands_offset(&mut self) {
        self.meta.next_offsets[COMMANDS] = self
            .pending_offsets
            .first()
            .copied()
            .unwrap_or(self.commands_read_to);
    }

    /// The task's database, for the runtime's changelog: it reads the batch's writes and adds
    /// its changelog positions to the commit.
    pub fn state_mut(&mut self) -> &mut TaskDb {
        &mut self.db
    }

    /// One SKU's view, if it has any state.
    pub fn sku_view(&self, sku: &str) -> Result<Option<SkuView>, TaskError> {
        sku_view(&self.db, sku)
    }

    /// Every SKU's view, in sku order.
    pub fn skus(&self) -> Result<Vec<SkuView>, TaskError> {
        let mut out = Vec::new();
        for (k, _) in self.db.scan_prefix(Store::Skus, &[])? {
            if let Some(view) = self.sku_view(&String::from_utf8_lossy(&k))? {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// Reservations held now, active and released: what `skus()` would list, without
    /// building every SKU's view.
    pub fn reservation_count(&self) -> Result<u64, TaskError> {
        Ok(self.db.count(Store::Reservations)?)
    }

    pub fn alert_count(&self, kind: AlertKind) -> u64 {
        self.meta.alerts.get(kind.label()).copied().unwrap_or(0)
    }
}

impl Input for SkuTask {
    fn is_full(&self, input: usize) -> bool {
        self.buffered(input) >= self.buffer_records_max
    }

    fn push(
        &mut self,
        input: usize,
        offset: i64,
        origin_offset: i64,
        timestamp_ms: Option<Millis>,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) {
        let origin = Origin {
            topic: self.topics[input].clone(),
            partition: self.partition,
            offset: origin_offset,
        };
        if input == INVENTORY {
            let decoded = decode_inventory(
                &self.codec,
                &self.bounds,
                key.as_deref(),
                value.as_deref(),
                timestamp_ms,
            );
            self.inventory.push_back(Buffered {
                offset,
                origin,
                key,
                value,
                decoded,
            });
        } else {
            let decoded = decode_command(&self.codec, value.as_deref());
            self.commands.push_back(Buffered {
                offset,
                origin,
                key,
                value,
                decoded,
            });
        }
    }
}

/// A SKU task's database holding SKU `sku` with `reservations` active ones (order ids
/// `o-00000`, `o-00001`, ...) and SKU `{sku}B` with one: what the state-query tests page through.
#[cfg(test)]
pub(crate) fn hot_sku_db(dir: &Path, sku: &str, reservations: usize) -> TaskDb {
    let mut db = TaskDb::open(dir, &Store::SKU_STAGE, &StateOptions::default()).unwrap();
    let neighbour = format!("{sku}B");
    for (sku, n) in [(sku, reservations), (neighbour.as_str(), 1)] {
        let state = Sku {
            on_hand_by_warehouse: BTreeMap::from([("w1".to_string(), n as i64)]),
            net_sold: 0,
            reserved: n as i64,
        };
        db.put(Store::Skus, sku.as_bytes().to_vec(), &state)
            .unwrap();
        for i in 0..n {
            let mut k = Vec::new();
            key::push_str(&mut k, sku);
            k.extend_from_slice(format!("o-{i:05}").as_bytes());
            let stored = StoredReservation {
                reservation: Reservation {
                    quantity: 1,
                    status: rules::ReservationStatus::ACTIVE,
                },
                applied_kinds: kind_bit(SkuCommandKind::Reserve),
            };
            db.put(Store::Reservations, k, &stored).unwrap();
        }
    }
    db.commit().unwrap();
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SKU's reservations are read a page at a time: each page holds at most its limit and
    /// names where the next starts, the pages together hold each reservation once, and a
    /// neighbouring SKU's never appear.
    #[test]
    fn a_hot_skus_reservations_are_read_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = hot_sku_db(dir.path(), "A", 25).reader();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = sku_page(&db, "A", after.as_deref(), 10).unwrap().unwrap();
            assert!(page.view.reservations.len() <= 10);
            assert_eq!(
                page.view.reserved, 25,
                "the numbers are the SKU's, not the page's"
            );
            seen.extend(page.view.reservations.keys().cloned());
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let all: Vec<String> = (0..25).map(|i| format!("o-{i:05}")).collect();
        assert_eq!(seen, all);
        // A SKU that fits one page reads as the whole view does.
        let whole = sku_page(&db, "AB", None, 10).unwrap().unwrap();
        assert_eq!(whole.next_after, None);
        assert_eq!(Some(whole.view), sku_view(&db, "AB").unwrap());
        assert!(sku_page(&db, "C", None, 10).unwrap().is_none());
    }

    fn reserve(order: &str, at: Millis) -> SkuCommand {
        command(SkuCommandKind::Reserve, order, at)
    }

    fn command(kind: SkuCommandKind, order: &str, at: Millis) -> SkuCommand {
        SkuCommand {
            command_id: ids::command_id(kind, order, "A"),
            kind,
            order_id: order.into(),
            sku: "A".into(),
            quantity: 1,
            occurred_at: at,
            sequence: 0,
            cause_event_id: format!("ev-{order}"),
            reason: None,
        }
    }

    /// With the pending set full, the watermark behind it is read rather than the earliest
    /// command forced ahead of it: the watermark makes that command ready in order.
    #[test]
    fn a_full_pending_set_reads_the_watermark_that_readies_its_earliest_command() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.limits.pending_commands_max = 2;
        let codec = Codec::new().unwrap();
        let topics = ["inventory".to_string(), "commands".to_string()];
        let mut task = SkuTask::open(dir.path(), 0, topics, 1, codec.clone(), &config).unwrap();
        let watermark = Watermark {
            source_partition: 0,
            stream_time: 150,
            end_of_input: false,
        };
        let records = [
            codec.encode(&reserve("o1", 100)).unwrap(),
            codec.encode(&reserve("o2", 200)).unwrap(),
            codec.encode(&watermark).unwrap(),
            codec.encode(&reserve("o3", 300)).unwrap(),
        ];
        for (offset, value) in records.into_iter().enumerate() {
            let offset = offset as i64;
            task.push(COMMANDS, offset, offset, None, None, Some(value));
        }
        let mut out = Vec::new();
        task.run(true, 100, &mut out).unwrap();
        assert_eq!(task.meta().forced_commands, 0, "a command was forced");
        assert_eq!(task.watermark(), 150);
        // o1 applied in order; o2 waits for a later watermark, o3 for room.
        assert_eq!(task.pending_commands(), 1);
        task.run(true, 100, &mut out).unwrap();
        assert_eq!(task.pending_commands(), 2);
        assert_eq!(task.meta().forced_commands, 0);
    }

    /// An end of input read and committed by one run is not the next run's: the reopened task
    /// waits for watermarks again, so a command behind its watermark is not applied at once.
    #[test]
    fn a_reopened_task_has_forgotten_the_end_of_input_of_the_run_before() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default();
        let codec = Codec::new().unwrap();
        let topics = ["inventory".to_string(), "commands".to_string()];
        let open = || SkuTask::open(dir.path(), 0, topics.clone(), 1, codec.clone(), &config);
        let end = Watermark {
            source_partition: 0,
            stream_time: 150,
            end_of_input: true,
        };
        let mut out = Vec::new();
        {
            let mut task = open().unwrap();
            task.push(
                COMMANDS,
                0,
                0,
                None,
                None,
                Some(codec.encode(&end).unwrap()),
            );
            task.run(true, 100, &mut out).unwrap();
            assert_eq!(task.watermark(), Millis::MAX);
            task.prepare_commit().unwrap();
            task.commit().unwrap();
        }
        let mut task = open().unwrap();
        assert_eq!(task.watermark(), 150, "the end of input outlived its run");
        let value = codec.encode(&reserve("o1", 200)).unwrap();
        task.push(COMMANDS, 1, 1, None, None, Some(value));
        task.run(true, 100, &mut out).unwrap();
        assert_eq!(task.pending_commands(), 1, "applied ahead of its watermark");
    }

    /// A Forget deletes the reservation and leaves a marker: a copy of a command sent before
    /// it (a dropped attempt's, read late) finds no reservation and changes nothing, while a
    /// command sent after it (the order placed again) reserves anew.
    #[test]
    fn a_command_sent_before_a_forget_and_read_after_it_changes_nothing() {
        use SkuCommandKind::*;
        let dir = tempfile::tempdir().unwrap();
        let codec = Codec::new().unwrap();
        let topics = ["inventory".to_string(), "commands".to_string()];
        let mut task =
            SkuTask::open(dir.path(), 0, topics, 1, codec.clone(), &Config::default()).unwrap();
        let mut offset = 0;
        let mut send = |task: &mut SkuTask, value: Vec<u8>| {
            task.push(COMMANDS, offset, offset, None, None, Some(value));
            offset += 1;
        };
        let watermark = |at: Millis| Watermark {
            source_partition: 0,
            stream_time: at,
            end_of_input: false,
        };
        let mut out = Vec::new();
        for c in [
            command(Reserve, "o1", 100),
            command(Release, "o1", 110),
            command(Forget, "o1", 150),
        ] {
            send(&mut task, codec.encode(&c).unwrap());
        }
        send(&mut task, codec.encode(&watermark(200)).unwrap());
        task.run(true, 100, &mut out).unwrap();
        let reservations = |task: &SkuTask| {
            sku_view(&task.db, "A")
                .unwrap()
                .map(|v| (v.reserved, v.reservations.len()))
        };
        assert_eq!(
            reservations(&task),
            Some((0, 0)),
            "o1's reservation was forgotten"
        );
        // The copies arrive behind the watermark and are applied at once: as duplicates.
        for c in [command(Reserve, "o1", 100), command(Forget, "o1", 150)] {
            send(&mut task, codec.encode(&c).unwrap());
        }
        task.run(true, 100, &mut out).unwrap();
        assert_eq!(reservations(&task), Some((0, 0)), "a copy reserved again");
        assert_eq!(task.meta().accounting[COMMANDS].duplicates, 2);
        // The order placed again after the Forget reserves.
        send(
            &mut task,
            codec.encode(&command(Reserve, "o1", 300)).unwrap(),
        );
        send(&mut task, codec.encode(&watermark(400)).unwrap());
        task.run(true, 100, &mut out).unwrap();
        assert_eq!(reservations(&task), Some((0, 1)));
    }
}
