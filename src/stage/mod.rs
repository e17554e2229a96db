//! The two stages' tasks, one per (stage, partition): each owns its inputs' processing order,
//! its dedup, its state and its accounting, and hands outputs to a sink. A task never talks to
//! a broker: the Kafka runtime and the broker-free driver both feed it the same way.

pub mod order;
pub mod retention;
pub mod sku;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::fold::Ignored;
use crate::sink::{DeadLetterReason, Origin, OutRecord};
use crate::state::{StateError, Store, TaskDb};

/// One consumed record waiting in its partition's buffer, decoded and validated on arrival so
/// the merge can compare event times without decoding twice.
#[derive(Debug)]
pub struct Buffered<E> {
    /// The record's offset in its partition; the task resumes after the last one it processed.
    pub offset: i64,
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub decoded: Result<E, (DeadLetterReason, String)>,
}

/// How a task takes consumed records: one buffer per input, each with a limit. The Kafka
/// runtime and the driver feed every task through this.
pub trait Input {
    /// True when `input`'s buffer is at its limit: the caller pauses that partition.
    fn is_full(&self, input: usize) -> bool;
    /// Buffers one consumed record. `origin_offset` is what its dead letter would report;
    /// `timestamp_ms` is its Kafka timestamp, when it has one.
    fn push(
        &mut self,
        input: usize,
        offset: i64,
        origin_offset: i64,
        timestamp_ms: Option<Millis>,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    );
}

/// Per-input accounting, committed with the state so it survives restarts and never counts a
/// reprocessed record twice: `consumed == applied + duplicates + ignored + dead_lettered + parked`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    pub consumed: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub ignored: BTreeMap<String, u64>,
    pub dead_lettered: BTreeMap<String, u64>,
    /// Records parked now (orphans waiting for their OrderPlaced).
    pub parked: u64,
}

impl Accounting {
    pub fn ignored_total(&self) -> u64 {
        self.ignored.values().sum()
    }

    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }

    /// True when every consumed record is accounted for exactly once.
    pub fn closes(&self) -> bool {
        self.consumed
            == self.applied
                + self.duplicates
                + self.ignored_total()
                + self.dead_lettered_total()
                + self.parked
    }

    pub fn count_ignored(&mut self, why: Ignored) {
        *self.ignored.entry(why.label().to_string()).or_default() += 1;
    }

    /// Counts a dead letter and returns its record: the one way a task dead-letters.
    pub fn dead_letter(
        &mut self,
        reason: DeadLetterReason,
        detail: &str,
        origin: &Origin,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        kept_bytes_max: usize,
    ) -> OutRecord {
        *self
            .dead_lettered
            .entry(reason.label().to_string())
            .or_default() += 1;
        crate::sink::dead_letter(reason, detail, origin, key, value, kept_bytes_max)
    }

    pub fn merge(&mut self, other: &Accounting) {
        self.consumed += other.consumed;
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.parked += other.parked;
        for (k, v) in &other.ignored {
            *self.ignored.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.dead_lettered {
            *self.dead_lettered.entry(k.clone()).or_default() += v;
        }
    }
}

/// Dedup by event id, per input topic of a task, remembered for a retention of stream time.
pub(crate) struct Dedup {
    pub retention_ms: Millis,
    pub purge_per_commit_max: usize,
    /// Where the sweep for expired ids goes on; it starts over after a restart.
    pub sweep_after: Option<Vec<u8>>,
    /// The oldest first-seen time the last complete sweep found (or any id seen since): until
    /// stream time is a retention past it, nothing can have expired and the sweep rests.
    floor: Option<Millis>,
    /// The oldest first-seen time of the sweep in progress.
    cycle_min: Millis,
}

pub(crate) fn dedup_key(rank: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(rank);
    k.extend_from_slice(id.as_bytes());
    k
}

impl Dedup {
    pub fn new(retention_ms: Millis, purge_per_commit_max: usize) -> Dedup {
        Dedup {
            retention_ms,
            purge_per_commit_max,
            sweep_after: None,
            floor: None,
            cycle_min: Millis::MAX,
        }
    }

    fn expired(&self, first_seen: Millis, now: Millis) -> bool {
        now >= first_seen.saturating_add(self.retention_ms)
    }

    /// True if `id` was already seen on input `rank` within the retention; otherwise remembers
    /// it as first seen at `now`. The first occurrence wins, whatever a later payload says.
    pub fn is_duplicate(
        &self,
        db: &mut TaskDb,
        rank: u8,
        id: &str,
        now: Millis,
    ) -> Result<bool, StateError> {
        let k = dedup_key(rank, id);
        if let Some(first_seen) = db.get::<Millis>(Store::Dedup, &k)? {
            if !self.expired(first_seen, now) {
                return Ok(true);
            }
        }
        db.put(Store::Dedup, k, &now)?;
        Ok(false)
    }

    /// Sweeps the next `purge_per_commit_max` committed ids and forgets the expired ones, so
    /// the store stays bounded by the retention without an index to write per event. The
    /// lookup above already ignores an expired id the sweep has not reached yet.
    pub fn purge(&mut self, db: &mut TaskDb, now: Millis) -> Result<(), StateError> {
        if self.floor.is_some_and(|floor| !self.expired(floor, now)) {
            return Ok(());
        }
        let batch = db.committed_after(
            Store::Dedup,
            self.sweep_after.as_deref(),
            self.purge_per_commit_max,
        )?;
        let complete = batch.len() < self.purge_per_commit_max;
        self.sweep_after = if complete {
            None
        } else {
            batch.last().map(|(k, _)| k.clone())
        };
        for (k, v) in batch {
            let Ok(first_seen) = postcard::from_bytes::<Millis>(&v) else {
                continue;
            };
            // The id may have been seen again in this batch: keep the newer entry.
            if self.expired(first_seen, now)
                && db.get::<Millis>(Store::Dedup, &k)? == Some(first_seen)
            {
                db.delete(Store::Dedup, k)?;
            } else {
                self.cycle_min = self.cycle_min.min(first_seen);
            }
        }
        if complete {
            // Ids first seen since the sweep began are no older than `now`.
            self.floor = Some(self.cycle_min.min(now));
            self.cycle_min = Millis::MAX;
        }
        Ok(())
    }
}

/// Why a task cannot go on. Both stop the task (the runtime closes it and exits non-zero):
/// neither is caused by input, which is always dead-lettered instead.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    State(#[from] StateError),
    /// One of our own records did not fit our own schema: a programming error.
    #[error("cannot encode output: {0}")]
    Encode(#[from] apache_avro::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateOptions;

    #[test]
    fn the_sweep_forgets_expired_ids_and_rests_until_one_can_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut db =
            TaskDb::open(dir.path(), &Store::ORDER_STAGE, &StateOptions::default()).unwrap();
        let mut dedup = Dedup::new(100, 2);
        for (i, t) in [10, 20, 30, 40, 50].iter().enumerate() {
            assert!(!dedup
                .is_duplicate(&mut db, 0, &format!("id-{i}"), *t)
                .unwrap());
        }
        db.commit().unwrap();
        // At 125 the ids seen at 10 and 20 have expired; two per call, so three calls sweep all.
        for _ in 0..3 {
            dedup.purge(&mut db, 125).unwrap();
            db.commit().unwrap();
        }
        let left: Vec<_> = db
            .scan_prefix(Store::Dedup, &[])
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            left,
            vec![b"\0id-2".to_vec(), b"\0id-3".to_vec(), b"\0id-4".to_vec()]
        );
        // The oldest left is 30: nothing expires before 130, so the sweep reads nothing.
        assert_eq!(dedup.floor, Some(30));
        dedup.purge(&mut db, 129).unwrap();
        assert_eq!(db.uncommitted(), 0);
        dedup.purge(&mut db, 130).unwrap();
        db.commit().unwrap();
        assert!(db.get::<Millis>(Store::Dedup, b"\0id-2").unwrap().is_none());
        // An id seen again after it expired is new again.
        assert!(!dedup.is_duplicate(&mut db, 0, "id-0", 200).unwrap());
        assert!(dedup.is_duplicate(&mut db, 0, "id-0", 299).unwrap());
    }
}
