//! The changelog: how a task's stores are mirrored to compacted `<app>.<store>-changelog`
//! topics (partition = task), how each batch is closed by a checkpoint record, and how a task
//! restores the part of its state that its local RocksDB is missing.
//!
//! A batch writes, per task: its store changes to the stores' changelogs, then (once those are
//! acknowledged, or in the same transaction) one checkpoint record to the stage's checkpoint
//! changelog. The checkpoint carries the task's bookkeeping after the batch (input offsets,
//! stream time, accounting) and, per store, the changelog offset the batch ends at. A restore
//! applies store records only up to the last checkpoint's offsets, so it never applies part of
//! a batch; records past them (a batch cut short by a crash) are read only to learn their keys,
//! which the task's next batch overwrites with the committed values.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::kafka;
use crate::state::{Stage, StateError, Store, TaskDb};

/// The key of checkpoint records (compaction keeps the last one per partition).
pub const CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// Where a task's local state stands in its changelogs, under this key of its `meta` store,
/// committed in the same WriteBatch as the state it describes.
const POSITIONS_KEY: &[u8] = b"changelog-positions";
/// How long a restore waits for the next record of a partition it has not finished.
const RESTORE_STALL: Duration = Duration::from_secs(30);
/// After the broker says a partition is at its end but fewer offsets than expected were seen
/// (compaction removed the last records), how long to wait for stragglers.
const COMPACTED_TAIL_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("changelog {topic} partition {partition}: record at offset {offset} is not a changelog record")]
    Malformed {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error(
        "local state of {stage} task {partition} is ahead of its changelog ({topic} ends at {end}, \
         local state has applied up to {local}): the changelog topics were recreated. Move the \
         task's state directory away to rebuild it from the changelog, or run `orderfold reset`"
    )]
    LocalAhead {
        stage: &'static str,
        partition: u32,
        topic: String,
        end: i64,
        local: i64,
    },
    #[error(
        "changelog {topic} partition {partition}: no record for {seconds} s before offset {end}"
    )]
    Stalled {
        topic: String,
        partition: i32,
        end: i64,
        seconds: u64,
    },
}

/// The record that closes a batch in the stage's checkpoint changelog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Per store (by `Stage::store_name`): the changelog's end offset after the batch.
    pub ends: BTreeMap<String, i64>,
    /// The task's `meta` entries after the batch: its input offsets, stream time, accounting.
    pub meta: Vec<(Vec<u8>, Vec<u8>)>,
    /// Per store: where the task's state begins, the changelog's end when the application was
    /// last reset (empty if never). Records before it belong to an earlier life of the
    /// application and are never applied; local state from that life is cleared.
    pub base: BTreeMap<String, i64>,
}

/// Where a task's local state stands in its changelogs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    /// Per store: the changelog offset up to which local state reflects it.
    pub ends: BTreeMap<String, i64>,
    /// The offset after the checkpoint record local state reflects.
    pub checkpoint: i64,
    /// The base of the checkpoint local state reflects (see `Checkpoint::base`).
    pub base: BTreeMap<String, i64>,
}

/// A changelog record's value: a put's bytes behind a marker byte (so an empty value stays
/// distinct from the tombstone of a delete), or None for a delete.
pub fn encode_value(value: Option<&[u8]>) -> Option<Vec<u8>> {
    value.map(|v| {
        let mut out = Vec::with_capacity(v.len() + 1);
        out.push(1);
        out.extend_from_slice(v);
        out
    })
}

fn decode_value(value: Option<&[u8]>) -> Option<Option<&[u8]>> {
    match value {
        None => Some(None),
        Some([1, rest @ ..]) => Some(Some(rest)),
        Some(_) => None,
    }
}

/// The changelog topics of a stage, by store: `<application_id>.<store>-changelog`.
pub fn topics(config: &Config, stage: Stage) -> Vec<(Store, String)> {
    stage
        .stores()
        .iter()
        .map(|s| {
            let name = format!(
                "{}.{}-changelog",
                config.kafka.application_id,
                stage.store_name(*s)
            );
            (*s, name)
        })
        .collect()
}

/// The task's local changelog positions, if it has committed with a changelog before.
pub fn local_positions(db: &TaskDb) -> Result<Option<Positions>, StateError> {
    db.get(Store::Meta, POSITIONS_KEY)
}

/// Adds the task's changelog positions to the batch about to commit.
pub fn stage_positions(db: &mut TaskDb, positions: &Positions) -> Result<(), StateError> {
    db.put(Store::Meta, POSITIONS_KEY.to_vec(), positions)
}

/// The batch's `meta` entries as a checkpoint carries them (local positions excluded).
pub fn meta_entries(db: &TaskDb) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries: Vec<_> = db
        .changes(Store::Meta)
        .filter(|(k, _)| *k != POSITIONS_KEY)
        .filter_map(|(k, v)| v.map(|v| (k.to_vec(), v.to_vec())))
        .collect();
    entries.sort();
    entries
}

/// What a restore did, and what the task must do before its first commit.
#[derive(Debug, Default)]
pub struct Restored {
    /// Changelog records applied to local state.
    pub applied: u64,
    /// Records read past the last checkpoint: a batch a crash cut short.
    pub tail: u64,
    /// Keys of that unfinished batch, which the task's next batch overwrites with their
    /// committed values so that compaction can never keep the unfinished ones.
    pub repair: BTreeSet<(Store, Vec<u8>)>,
    /// Each changelog's end offset now (the checkpoint changelog's included): where the
    /// task's writes continue.
    pub ends: BTreeMap<Store, i64>,
    /// The base the task's checkpoints carry on.
    pub base: BTreeMap<String, i64>,
    /// Local state was from before a reset and was cleared.
    pub cleared: bool,
}

/// Live restore counts for progress reports: records applied so far and still to apply.
pub trait RestoreProgress {
    fn update(&self, applied: u64, remaining: u64);
}

impl<F: Fn(u64, u64)> RestoreProgress for F {
    fn update(&self, applied: u64, remaining: u64) {
        self(applied, remaining)
    }
}

/// One partition being read: from where, to where records apply, and to where it ends.
struct Span {
    topic: String,
    from: i64,
    apply_until: i64,
    end: i64,
}

/// Brings `db` (task `partition` of `stage`) up to its changelogs' last checkpoint: applies
/// the store records between its local positions (or the start, without local state) and the
/// checkpoint's offsets, then the checkpoint's bookkeeping and the new positions, in
/// WriteBatches of `limits.restore_batch_records_max`. Local state is never wiped: a task that
/// crashed reads only what it had not committed. Interrupted, it is simply run again.
pub fn restore(
    config: &Config,
    stage: Stage,
    partition: u32,
    db: &mut TaskDb,
    progress: &dyn RestoreProgress,
) -> Result<Restored, RestoreError> {
    let p = partition as i32;
    let mut local = local_positions(db)?;
    let consumer: BaseConsumer = kafka::client_config(config)
        .set(
            "group.id",
            format!("{}.restore", config.kafka.application_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        // One partition is read at a time, to its end: a fetch that waits for more data than
        // is left only delays the next one.
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let topics = topics(config, stage);
    let mut restored = Restored::default();

    // The last checkpoint at or after the one local state reflects.
    let (checkpoint_topic, data_topics): (Vec<_>, Vec<_>) =
        topics.into_iter().partition(|(s, _)| *s == Store::Meta);
    let Some((_, checkpoint_topic)) = checkpoint_topic.into_iter().next() else {
        return Ok(restored);
    };
    let (low, high) = consumer.fetch_watermarks(&checkpoint_topic, p, kafka::REQUEST_TIMEOUT)?;
    restored.ends.insert(Store::Meta, high);
    let local_checkpoint = local.as_ref().map_or(0, |l| l.checkpoint);
    if local_checkpoint > high {
        return Err(RestoreError::LocalAhead {
            stage: stage.name(),
            partition,
            topic: checkpoint_topic,
            end: high,
            local: local_checkpoint,
        });
    }
    let mut last: Option<(i64, Checkpoint)> = None;
    let span = Span {
        topic: checkpoint_topic.clone(),
        from: (local_checkpoint - 1).max(low),
        apply_until: high,
        end: high,
    };
    read_span(&consumer, p, &span, |offset, key, value| {
        if key != Some(CHECKPOINT_KEY) {
            return Ok(());
        }
        let checkpoint = value
            .and_then(|v| postcard::from_bytes::<Checkpoint>(v).ok())
            .ok_or_else(|| RestoreError::Malformed {
                topic: checkpoint_topic.clone(),
                partition: p,
                offset,
            })?;
        last = Some((offset, checkpoint));
        Ok(())
    })?;
    // Already reflected locally: the store records up to it need no applying.
    let target = last.filter(|(offset, _)| offset + 1 > local_checkpoint);
    if let Some((_, checkpoint)) = &target {
        restored.base = checkpoint.base.clone();
        // The application was reset since local state was written: that state belongs to its
        // earlier life. Clearing it is what the operator asked for.
        if local.as_ref().is_some_and(|l| l.base != checkpoint.base) {
            db.clear()?;
            local = None;
            restored.cleared = true;
        }
    } else if let Some(l) = &local {
        restored.base = l.base.clone();
    }

    let mut spans = Vec::new();
    for (store, topic) in &data_topics {
        let name = stage.store_name(*store);
        let (low, high) = consumer.fetch_watermarks(topic, p, kafka::REQUEST_TIMEOUT)?;
        restored.ends.insert(*store, high);
        let from = local
            .as_ref()
            .and_then(|l| l.ends.get(&name).copied())
            .or_else(|| restored.base.get(&name).copied())
            .unwrap_or(low)
            .max(low);
        let apply_until = target
            .as_ref()
            .and_then(|(_, c)| c.ends.get(&name).copied())
            .unwrap_or(from);
        if from > high || apply_until > high {
            return Err(RestoreError::LocalAhead {
                stage: stage.name(),
                partition,
                topic: topic.clone(),
                end: high,
                local: from.max(apply_until),
            });
        }
        spans.push((
            *store,
            Span {
                topic: topic.clone(),
                from,
                apply_until: apply_until.max(from),
                end: high,
            },
        ));
    }
    let mut remaining: u64 = spans
        .iter()
        .map(|(_, s)| (s.apply_until - s.from).max(0) as u64)
        .sum();
    progress.update(0, remaining);
    let batch_max = config.limits.restore_batch_records_max as u64;
    let mut in_batch = 0u64;
    for (store, span) in &spans {
        read_span(&consumer, p, span, |offset, key, value| {
            let key = key.unwrap_or_default().to_vec();
            if offset >= span.apply_until {
                restored.tail += 1;
                restored.repair.insert((*store, key));
                return Ok(());
            }
            let value = decode_value(value).ok_or_else(|| RestoreError::Malformed {
                topic: span.topic.clone(),
                partition: p,
                offset,
            })?;
            match value {
                Some(v) => db.put_raw(*store, key, v.to_vec())?,
                None => db.delete(*store, key)?,
            }
            restored.applied += 1;
            remaining = remaining.saturating_sub(1);
            in_batch += 1;
            if in_batch >= batch_max {
                // Partial progress without new positions: a restore cut short starts over
                // from the old positions, and applying a record twice in order is harmless.
                db.commit()?;
                in_batch = 0;
                progress.update(restored.applied, remaining);
            }
            Ok(())
        })?;
    }
    if let Some((offset, checkpoint)) = &target {
        for (k, v) in &checkpoint.meta {
            db.put_raw(Store::Meta, k.clone(), v.clone())?;
        }
        let positions = Positions {
            ends: checkpoint.ends.clone(),
            checkpoint: offset + 1,
            base: checkpoint.base.clone(),
        };
        stage_positions(db, &positions)?;
    }
    db.commit()?;
    progress.update(restored.applied, 0);
    Ok(restored)
}

/// Reads partition `p` of `span.topic` from `span.from` to `span.end`, handing each record to
/// `f` in offset order.
fn read_span(
    consumer: &BaseConsumer,
    p: i32,
    span: &Span,
    mut f: impl FnMut(i64, Option<&[u8]>, Option<&[u8]>) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    if span.from >= span.end {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&span.topic, p, Offset::Offset(span.from))?;
    consumer.assign(&tpl)?;
    let mut last_record = Instant::now();
    let mut at_end_since: Option<Instant> = None;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_record = Instant::now();
                at_end_since = None;
                if m.offset() >= span.from {
                    f(m.offset(), m.key(), m.payload())?;
                }
                if m.offset() + 1 >= span.end {
                    break;
                }
            }
            // Only one partition is assigned, so an end-of-partition event is this one's. The
            // last offsets may hold no record for us: a transaction's commit marker, or records
            // compaction removed. The consumer's position passes the first; for the second,
            // nothing more arriving for a moment means the partition is done.
            Some(Err(KafkaError::PartitionEOF(_))) => {
                let position = consumer.position()?;
                let passed = position
                    .find_partition(&span.topic, p)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= span.end));
                if passed {
                    break;
                }
                at_end_since.get_or_insert_with(Instant::now);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        if at_end_since.is_some_and(|t| t.elapsed() >= COMPACTED_TAIL_WAIT) {
            tracing::debug!(topic = %span.topic, partition = p, "changelog ends before its end offset");
            break;
        }
        if last_record.elapsed() >= RESTORE_STALL {
            return Err(RestoreError::Stalled {
                topic: span.topic.clone(),
                partition: p,
                end: span.end,
                seconds: RESTORE_STALL.as_secs(),
            });
        }
    }
    consumer.unassign()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_empty_puts_apart_from_deletes() {
        assert_eq!(
            decode_value(encode_value(Some(b"")).as_deref()),
            Some(Some(&b""[..]))
        );
        assert_eq!(
            decode_value(encode_value(Some(b"ab")).as_deref()),
            Some(Some(&b"ab"[..]))
        );
        assert_eq!(decode_value(encode_value(None).as_deref()), Some(None));
        assert_eq!(decode_value(Some(b"\x02x")), None);
        assert_eq!(decode_value(Some(b"")), None);
    }

    #[test]
    fn store_names_are_unique_across_stages() {
        let config = Config::default();
        let mut all: Vec<String> = topics(&config, Stage::Order)
            .into_iter()
            .chain(topics(&config, Stage::Sku))
            .map(|(_, t)| t)
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(all.contains(&"orderfold.order-checkpoint-changelog".to_string()));
        assert!(all.contains(&"orderfold.skus-changelog".to_string()));
    }
}
