//! The two stages' tasks, one per (stage, partition): each owns its inputs' processing order,
//! its dedup, its state and its accounting, and hands outputs to a sink. A task never talks to
//! a broker: the Kafka runtime and the broker-free driver both feed it the same way.

pub mod order;
pub mod sku;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::fold::Ignored;
use crate::sink::{DeadLetterReason, Origin};
use crate::state::{key, StateError, Store, TaskDb};

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

    pub fn count_dead_letter(&mut self, reason: DeadLetterReason) {
        *self
            .dead_lettered
            .entry(reason.label().to_string())
            .or_default() += 1;
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

/// Dedup by id, per input topic of a task, remembered for a retention of stream time.
pub(crate) struct Dedup {
    pub retention_ms: Millis,
    pub purge_per_commit_max: usize,
}

fn dedup_key(rank: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(rank);
    k.extend_from_slice(id.as_bytes());
    k
}

fn dedup_time_key(first_seen: Millis, rank: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + id.len());
    key::push_time(&mut k, first_seen);
    k.push(rank);
    k.extend_from_slice(id.as_bytes());
    k
}

impl Dedup {
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
            if now < first_seen.saturating_add(self.retention_ms) {
                return Ok(true);
            }
        }
        db.put(Store::Dedup, k, &now)?;
        db.put_raw(
            Store::DedupByTime,
            dedup_time_key(now, rank, id),
            Vec::new(),
        )?;
        Ok(false)
    }

    /// Forgets ids first seen more than the retention before `now`, a bounded number per call.
    pub fn purge(&self, db: &mut TaskDb, now: Millis) -> Result<(), StateError> {
        let cutoff = now.saturating_sub(self.retention_ms);
        let mut end = Vec::new();
        key::push_time(&mut end, cutoff.saturating_add(1));
        for time_key in db.committed_below(Store::DedupByTime, &end, self.purge_per_commit_max)? {
            let (Some(first_seen), Some(&rank)) = (key::read_time(&time_key), time_key.get(8))
            else {
                continue;
            };
            let k = {
                let mut k = vec![rank];
                k.extend_from_slice(&time_key[9..]);
                k
            };
            // The id may have been seen again after it expired: keep the newer entry.
            if db.get::<Millis>(Store::Dedup, &k)? == Some(first_seen) {
                db.delete(Store::Dedup, k)?;
            }
            db.delete(Store::DedupByTime, time_key)?;
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
