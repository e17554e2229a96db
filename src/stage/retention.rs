//! When the order stage forgets a final order id (`rules.final_retention_ms`): the deadlines in
//! the `retention` store, and the window of the earliest ones held in memory. The store holds
//! a month of final orders; memory holds at most `limits.forget_timers_cached_max` of them.

use std::collections::BTreeSet;

use crate::event::Millis;
use crate::state::{key, StateError, Store, TaskDb};

/// Keys `('d', deadline, order_id)`: one per time an id was left final.
const DEADLINE: u8 = b'd';
/// Keys `('a', order_id)` -> the id's latest deadline, the only one that counts.
const ARMED: u8 = b'a';

fn deadline_key(at: Millis, order_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + order_id.len());
    k.push(DEADLINE);
    key::push_time(&mut k, at);
    k.extend_from_slice(order_id.as_bytes());
    k
}

fn armed_key(order_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + order_id.len());
    k.push(ARMED);
    k.extend_from_slice(order_id.as_bytes());
    k
}

/// A deadline that came due.
#[derive(Debug, PartialEq, Eq)]
pub struct Due {
    pub at: Millis,
    pub order_id: String,
    /// It is the id's latest deadline: nothing changed the id since it was set. An earlier
    /// one is spent without effect.
    pub latest: bool,
}

/// The retention deadlines of one order task.
pub struct Retention {
    /// `rules.final_retention_ms`; 0 forgets nothing.
    pub retention_ms: Millis,
    cached_max: usize,
    /// Every deadline key below `horizon`: the next ones due.
    due: BTreeSet<Vec<u8>>,
    /// The first deadline key not read into `due`; None once `due` holds all of them.
    horizon: Option<Vec<u8>>,
}

impl Retention {
    /// Nothing is read until a deadline is asked for: opening a task stays as fast as before.
    pub fn new(retention_ms: Millis, cached_max: usize) -> Retention {
        Retention {
            retention_ms,
            cached_max: cached_max.max(1),
            due: BTreeSet::new(),
            horizon: Some(vec![DEADLINE]),
        }
    }

    pub fn on(&self) -> bool {
        self.retention_ms > 0
    }

    /// Sets `order_id` to be forgotten a retention after `now`, replacing any deadline it had:
    /// retention counts from the last change that left the id final.
    pub fn arm(&mut self, db: &mut TaskDb, order_id: &str, now: Millis) -> Result<(), StateError> {
        let at = now.saturating_add(self.retention_ms);
        let k = deadline_key(at, order_id);
        db.put(Store::Retention, armed_key(order_id), &at)?;
        db.put(Store::Retention, k.clone(), &())?;
        if self.horizon.as_ref().is_none_or(|h| k < *h) {
            self.due.insert(k);
        }
        Ok(())
    }

    /// The earliest deadline, if any.
    pub fn next_at(&mut self, db: &TaskDb) -> Result<Option<Millis>, StateError> {
        if self.due.is_empty() {
            self.refill(db)?;
        }
        Ok(self.due.first().and_then(|k| key::read_time(k.get(1..)?)))
    }

    /// Removes the earliest deadline (the one `next_at` named) from memory and the store.
    pub fn pop(&mut self, db: &mut TaskDb) -> Result<Option<Due>, StateError> {
        let Some(k) = self.due.pop_first() else {
            return Ok(None);
        };
        db.delete(Store::Retention, k.clone())?;
        // Keys read back from disk: a short one is skipped, never sliced past its end.
        let (Some(at), Some(id)) = (k.get(1..).and_then(key::read_time), k.get(9..)) else {
            return Ok(None);
        };
        let order_id = String::from_utf8_lossy(id).into_owned();
        let armed = armed_key(&order_id);
        let latest = db.get::<Millis>(Store::Retention, &armed)? == Some(at);
        if latest {
            db.delete(Store::Retention, armed)?;
        }
        Ok(Some(Due {
            at,
            order_id,
            latest,
        }))
    }

    /// Reads the next window of deadlines from the store into memory.
    fn refill(&mut self, db: &TaskDb) -> Result<(), StateError> {
        let Some(from) = self.horizon.take() else {
            return Ok(());
        };
        let mut keys = db.keys_from(Store::Retention, &from, &[DEADLINE], self.cached_max + 1)?;
        if keys.len() > self.cached_max {
            self.horizon = keys.pop();
        }
        // Only whole keys ('d', 8-byte time, id) can come due; anything shorter is not ours.
        self.due.extend(keys.into_iter().filter(|k| k.len() >= 9));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateOptions;

    fn db(dir: &std::path::Path) -> TaskDb {
        TaskDb::open(dir, &Store::ORDER_STAGE, &StateOptions::default()).unwrap()
    }

    fn drain(r: &mut Retention, db: &mut TaskDb, before: Millis) -> Vec<(Millis, String, bool)> {
        let mut fired = Vec::new();
        while r.next_at(db).unwrap().is_some_and(|at| at < before) {
            let d = r.pop(db).unwrap().unwrap();
            fired.push((d.at, d.order_id, d.latest));
        }
        fired
    }

    /// With a window of two, deadlines spread over commits and the overlay still come due in
    /// deadline order, each once, and a re-armed id counts only its latest deadline.
    #[test]
    fn deadlines_come_due_in_order_through_a_small_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = db(dir.path());
        let mut r = Retention::new(100, 2);
        for (id, now) in [("a", 5), ("b", 1), ("c", 9), ("d", 3)] {
            r.arm(&mut db, id, now).unwrap();
        }
        db.commit().unwrap();
        // Reopened: nothing in memory, everything on disk.
        let mut r = Retention::new(100, 2);
        r.arm(&mut db, "e", 2).unwrap();
        // "a" changes again: its deadline at 105 is spent without effect.
        r.arm(&mut db, "a", 7).unwrap();
        assert_eq!(
            drain(&mut r, &mut db, 107),
            vec![
                (101, "b".to_string(), true),
                (102, "e".to_string(), true),
                (103, "d".to_string(), true),
                (105, "a".to_string(), false),
            ]
        );
        db.commit().unwrap();
        r.arm(&mut db, "f", 8).unwrap();
        assert_eq!(
            drain(&mut r, &mut db, 1_000),
            vec![
                (107, "a".to_string(), true),
                (108, "f".to_string(), true),
                (109, "c".to_string(), true),
            ]
        );
        db.commit().unwrap();
        assert_eq!(db.count(Store::Retention).unwrap(), 0, "every key is gone");
    }
}
