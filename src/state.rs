//! A task's durable state: one RocksDB per task directory, one column family per store, and
//! an overlay of uncommitted writes that reads see first. It owns atomicity: a commit writes
//! every change of the batch and the task's input offsets in one WriteBatch, so the on-disk
//! state is always the state after some whole number of batches, never part of one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteBufferManager, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A raw key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The stores. Each is a column family of the task's RocksDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Store {
    /// Task bookkeeping: input offsets, stream time, watermarks.
    Meta,
    /// order_id -> Order.
    Orders,
    /// order_id -> Tracking.
    Tracking,
    /// order_id -> events parked until their OrderPlaced arrives.
    Orphans,
    /// (deadline, kind, order_id) -> (): reservation timers and orphan expiries by instant.
    Timers,
    /// (topic rank, event id) -> first-seen stream time.
    Dedup,
    /// When final order ids are forgotten: ('d', deadline, order_id) -> () and, for the
    /// deadline that counts, ('a', order_id) -> deadline.
    Retention,
    /// sku -> Sku totals.
    Skus,
    /// (sku, order_id) -> Reservation.
    Reservations,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::Meta => "meta",
            Store::Orders => "orders",
            Store::Tracking => "tracking",
            Store::Orphans => "orphans",
            Store::Timers => "timers",
            Store::Dedup => "dedup",
            Store::Retention => "retention",
            Store::Skus => "skus",
            Store::Reservations => "reservations",
        }
    }

    pub const ORDER_STAGE: [Store; 7] = [
        Store::Meta,
        Store::Orders,
        Store::Tracking,
        Store::Orphans,
        Store::Timers,
        Store::Dedup,
        Store::Retention,
    ];

    pub const SKU_STAGE: [Store; 4] = [Store::Meta, Store::Skus, Store::Reservations, Store::Dedup];
}

/// The two stages, each with its own set of stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Order,
    Sku,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Order => "order",
            Stage::Sku => "sku",
        }
    }

    pub fn stores(self) -> &'static [Store] {
        match self {
            Stage::Order => &Store::ORDER_STAGE,
            Stage::Sku => &Store::SKU_STAGE,
        }
    }

    /// The name a store goes by outside the task, unique across both stages: the `<store>` of
    /// its changelog topic `<application_id>.<store>-changelog`. `meta` is mirrored as the
    /// stage's checkpoint records, which close each batch.
    pub fn store_name(self, store: Store) -> String {
        match store {
            Store::Meta => format!("{}-checkpoint", self.name()),
            Store::Dedup => format!("{}-dedup", self.name()),
            other => other.name().to_string(),
        }
    }
}

/// What went wrong with local state. The caller stops the task: a store it cannot read or
/// write is not something to skip past.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("store {store}: cannot decode value: {source}")]
    Corrupt {
        store: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("cannot encode state value: {0}")]
    Encode(#[source] postcard::Error),
    #[error("store {0} is not open in this task")]
    NotOpen(&'static str),
}

/// Settings of a task's RocksDB.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// fsync the WAL at each commit. Off by default: the WAL survives a process crash without
    /// it, and only a machine crash can lose the last commits, which the inputs then replay.
    pub sync_commits: bool,
    /// Bloom filter bits per key; most dedup reads miss, and the filter answers them in memory.
    pub bloom_bits_per_key: f64,
    /// Memtable size per column family.
    pub write_buffer_bytes: usize,
    /// Open without the write lock, so `inspect` can read while the service runs. Commits fail.
    pub read_only: bool,
    /// The process-wide memory budget this task's RocksDB shares with every other task.
    pub memory: SharedMemory,
}

impl Default for StateOptions {
    fn default() -> Self {
        let config = crate::config::StateConfig::default();
        StateOptions {
            sync_commits: false,
            bloom_bits_per_key: 10.0,
            write_buffer_bytes: 16 << 20,
            read_only: false,
            memory: SharedMemory::of(config.memory_budget_bytes),
        }
    }
}

impl StateOptions {
    /// A task's settings from the `state` section.
    pub fn from_config(config: &crate::config::Config) -> StateOptions {
        StateOptions {
            sync_commits: config.state.sync_commits,
            read_only: config.state.read_only,
            memory: SharedMemory::of(config.state.memory_budget_bytes),
            ..StateOptions::default()
        }
    }
}

/// One block cache, and a write-buffer manager that charges memtables to it, shared by every
/// task of the process that has the same budget: tasks open and close on every rebalance,
/// and the budget is the process's, not each task's.
#[derive(Clone)]
pub struct SharedMemory {
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("cache_bytes", &self.cache.get_usage())
            .field("write_buffer_bytes", &self.write_buffers.get_usage())
            .finish()
    }
}

impl SharedMemory {
    /// The process's pool for `budget_bytes`, created on first use.
    pub fn of(budget_bytes: usize) -> SharedMemory {
        static POOLS: OnceLock<Mutex<HashMap<usize, SharedMemory>>> = OnceLock::new();
        let pools = POOLS.get_or_init(Default::default);
        // A panic elsewhere while holding the lock leaves the map itself intact.
        let mut pools = pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pools
            .entry(budget_bytes)
            .or_insert_with(|| {
                let cache = Cache::new_lru_cache(budget_bytes);
                // allow_stall = false: past the limit the largest memtable is flushed; writes
                // never wait, so a commit's latency does not depend on other tasks' flushes.
                let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
                    budget_bytes / 2,
                    false,
                    cache.clone(),
                );
                SharedMemory {
                    cache,
                    write_buffers,
                }
            })
            .clone()
    }
}

/// One task's RocksDB with its uncommitted writes.
pub struct TaskDb {
    /// Shared with the readers that answer state queries while the task runs.
    db: std::sync::Arc<DB>,
    stores: Vec<Store>,
    /// Uncommitted writes per store: Some(value) is a put, None a delete.
    overlay: HashMap<Store, HashMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Keys put in this batch that the caller knows were absent before it: deleting one again
    /// before the commit leaves nothing to write, not a put and a tombstone.
    fresh: std::collections::HashSet<(Store, Vec<u8>)>,
    sync_commits: bool,
}

impl TaskDb {
    /// Opens (creating if needed) the task's database with the given stores.
    pub fn open(dir: &Path, stores: &[Store], opts: &StateOptions) -> Result<TaskDb, StateError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_write_buffer_manager(&opts.memory.write_buffers);
        let cfs = stores.iter().map(|s| {
            let mut table = BlockBasedOptions::default();
            table.set_bloom_filter(opts.bloom_bits_per_key, false);
            table.set_block_cache(&opts.memory.cache);
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(opts.write_buffer_bytes);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            // Most dedup lookups miss; a memtable bloom filter answers them without a search.
            o.set_memtable_whole_key_filtering(true);
            o.set_memtable_prefix_bloom_ratio(0.05);
            ColumnFamilyDescriptor::new(s.name(), o)
        });
        let db = if opts.read_only {
            DB::open_cf_descriptors_read_only(&db_opts, dir, cfs, false)?
        } else {
            DB::open_cf_descriptors(&db_opts, dir, cfs)?
        };
        Ok(TaskDb {
            db: std::sync::Arc::new(db),
            stores: stores.to_vec(),
            overlay: stores.iter().map(|s| (*s, HashMap::new())).collect(),
            fresh: Default::default(),
            sync_commits: opts.sync_commits,
        })
    }

    /// A view of this database's committed state only (this handle's uncommitted writes are
    /// not in it), for reading from another thread while the task goes on. It must only read:
    /// a commit through it would write behind the task's back.
    pub fn reader(&self) -> TaskDb {
        TaskDb {
            db: self.db.clone(),
            stores: self.stores.clone(),
            overlay: self.stores.iter().map(|s| (*s, HashMap::new())).collect(),
            fresh: Default::default(),
            sync_commits: self.sync_commits,
        }
    }

    fn cf(&self, store: Store) -> Result<&rocksdb::ColumnFamily, StateError> {
        self.db
            .cf_handle(store.name())
            .ok_or(StateError::NotOpen(store.name()))
    }

    fn overlay_mut(
        &mut self,
        store: Store,
    ) -> Result<&mut HashMap<Vec<u8>, Option<Vec<u8>>>, StateError> {
        self.overlay
            .get_mut(&store)
            .ok_or(StateError::NotOpen(store.name()))
    }

    /// The value as this task sees it now, its own uncommitted writes included.
    pub fn get_raw(&self, store: Store, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(pending) = self.overlay.get(&store).and_then(|o| o.get(key)) {
            return Ok(pending.clone());
        }
        Ok(self.db.get_cf(self.cf(store)?, key)?)
    }

    pub fn put_raw(
        &mut self,
        store: Store,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        self.overlay_mut(store)?.insert(key, Some(value));
        Ok(())
    }

    pub fn delete(&mut self, store: Store, key: Vec<u8>) -> Result<(), StateError> {
        if !self.fresh.is_empty() {
            if let Some((_, key)) = self.fresh.take(&(store, key.clone())) {
                self.overlay_mut(store)?.remove(&key);
                return Ok(());
            }
        }
        self.overlay_mut(store)?.insert(key, None);
        Ok(())
    }

    /// A put of a key the caller knows is not in the store (it keeps a complete index of the
    /// store's keys in memory). Short-lived entries, such as a timer set and fired in the same
    /// batch, then never reach RocksDB.
    pub fn put_new<T: Serialize>(
        &mut self,
        store: Store,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StateError> {
        // Deleted earlier in this batch: the committed entry may still be on disk.
        if !self.overlay_mut(store)?.contains_key(&key) {
            self.fresh.insert((store, key.clone()));
        }
        self.put(store, key, value)
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        store: Store,
        key: &[u8],
    ) -> Result<Option<T>, StateError> {
        match self.get_raw(store, key)? {
            None => Ok(None),
            Some(bytes) => {
                postcard::from_bytes(&bytes)
                    .map(Some)
                    .map_err(|source| StateError::Corrupt {
                        store: store.name(),
                        source,
                    })
            }
        }
    }

    pub fn put<T: Serialize>(
        &mut self,
        store: Store,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = postcard::to_stdvec(value).map_err(StateError::Encode)?;
        self.put_raw(store, key, bytes)
    }

    /// Every entry of `store` whose key starts with `prefix`, in key order, as this task sees
    /// them now. Scans the overlay linearly: meant for dumps, checks and startup, not per record.
    pub fn scan_prefix(&self, store: Store, prefix: &[u8]) -> Result<Vec<KeyValue>, StateError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let iter = self.db.iterator_cf(
            self.cf(store)?,
            IteratorMode::From(prefix, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            merged.insert(k.to_vec(), v.to_vec());
        }
        if let Some(overlay) = self.overlay.get(&store) {
            for (k, v) in overlay.iter().filter(|(k, _)| k.starts_with(prefix)) {
                match v {
                    Some(v) => merged.insert(k.clone(), v.clone()),
                    None => merged.remove(k),
                };
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Up to `limit` committed entries of `store` whose key starts with `prefix` and lies after
    /// `prefix` + `after` (from the prefix's first if None), in key order. What a page of a
    /// state query reads: it holds no more than it returns.
    pub fn committed_prefix_page(
        &self,
        store: Store,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StateError> {
        let from = [prefix, after.unwrap_or_default()].concat();
        let iter = self.db.iterator_cf(
            self.cf(store)?,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if after.is_some() && *k == *from {
                continue;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The first `limit` keys of `store` that start with `prefix` and are at or after `from`,
    /// in key order, as this task sees them now (its uncommitted writes included). Reads no
    /// more committed entries than it returns, and the overlay once.
    pub fn keys_from(
        &self,
        store: Store,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StateError> {
        let overlay = self.overlay.get(&store);
        let mut keys = Vec::new();
        let iter = self.db.iterator_cf(
            self.cf(store)?,
            IteratorMode::From(from, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(prefix) || keys.len() >= limit {
                break;
            }
            // The overlay's own entry for the key, put or delete, is the one that counts.
            if overlay.is_some_and(|o| o.contains_key(&*k)) {
                continue;
            }
            keys.push(k.to_vec());
        }
        if let Some(overlay) = overlay {
            keys.extend(
                overlay
                    .iter()
                    .filter(|(k, v)| v.is_some() && k.starts_with(prefix) && k.as_slice() >= from)
                    .map(|(k, _)| k.clone()),
            );
        }
        keys.sort_unstable();
        keys.truncate(limit);
        Ok(keys)
    }

    /// How many entries `store` holds as this task sees them now, counted without holding
    /// them: a bounded run's report counts a million reservations this way.
    pub fn count(&self, store: Store) -> Result<u64, StateError> {
        let cf = self.cf(store)?;
        let mut n = 0u64;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            item?;
            n += 1;
        }
        if let Some(overlay) = self.overlay.get(&store) {
            for (k, v) in overlay {
                match (self.db.get_pinned_cf(cf, k)?.is_some(), v.is_some()) {
                    (false, true) => n += 1,
                    (true, false) => n = n.saturating_sub(1),
                    _ => {}
                }
            }
        }
        Ok(n)
    }

    /// `scan_prefix`, with values decoded.
    pub fn scan_typed<T: DeserializeOwned>(
        &self,
        store: Store,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, StateError> {
        self.scan_prefix(store, prefix)?
            .into_iter()
            .map(|(k, v)| {
                postcard::from_bytes(&v)
                    .map(|t| (k, t))
                    .map_err(|source| StateError::Corrupt {
                        store: store.name(),
                        source,
                    })
            })
            .collect()
    }

    /// Up to `limit` committed entries of `store` after `after` (from the start if None), in
    /// key order. Uncommitted writes are not seen: used by background sweeps.
    pub fn committed_after(
        &self,
        store: Store,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StateError> {
        self.committed_prefix_page(store, b"", after, limit)
    }

    /// The batch's uncommitted writes to `store` (None is a delete), in no particular order:
    /// what the changelog mirrors at commit.
    pub fn changes(&self, store: Store) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.overlay
            .get(&store)
            .into_iter()
            .flat_map(|o| o.iter())
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// Number of uncommitted writes.
    pub fn uncommitted(&self) -> usize {
        self.overlay.values().map(HashMap::len).sum()
    }

    /// Writes every uncommitted change, and whatever else the caller put in the overlay (the
    /// task's offsets in `Meta`), in one atomic WriteBatch, then forgets the overlay.
    pub fn commit(&mut self) -> Result<(), StateError> {
        let bytes: usize = self
            .overlay
            .values()
            .flat_map(|o| o.iter())
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 16)
            .sum();
        let mut batch = WriteBatch::with_capacity_bytes(bytes);
        for store in &self.stores {
            let cf = self.cf(*store)?;
            if let Some(overlay) = self.overlay.get(store) {
                for (k, v) in overlay {
                    match v {
                        Some(v) => batch.put_cf(cf, k, v),
                        None => batch.delete_cf(cf, k),
                    }
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync_commits);
        self.db.write_opt(batch, &wo)?;
        for overlay in self.overlay.values_mut() {
            overlay.clear();
        }
        self.fresh.clear();
        Ok(())
    }

    /// Commits with the task's bookkeeping (offsets, stream time, accounting) under `Meta`,
    /// in the same WriteBatch as the state it describes.
    pub fn commit_with_meta<T: Serialize>(
        &mut self,
        key: &[u8],
        meta: &T,
    ) -> Result<(), StateError> {
        self.put(Store::Meta, key.to_vec(), meta)?;
        self.commit()
    }

    /// Deletes every committed entry of every store, in WriteBatches of 10,000: for state
    /// an application reset has made obsolete, never after a crash.
    pub fn clear(&mut self) -> Result<(), StateError> {
        const BATCH_MAX: usize = 10_000;
        self.discard();
        for store in self.stores.clone() {
            loop {
                let batch = self.committed_after(store, None, BATCH_MAX)?;
                if batch.is_empty() {
                    break;
                }
                for (k, _) in batch {
                    self.delete(store, k)?;
                }
                self.commit()?;
            }
        }
        Ok(())
    }

    /// Forgets uncommitted writes, as a crash would.
    pub fn discard(&mut self) {
        for overlay in self.overlay.values_mut() {
            overlay.clear();
        }
        self.fresh.clear();
    }
}

/// Order-preserving key encoding for composite keys, so that RocksDB's byte order is the
/// tuple order. A string that is not the last component is escaped (0x00 -> 0x00 0xFF) and
/// terminated (0x00 0x00), so "a" sorts before "ab" and a prefix scan of "a" excludes "ab".
pub mod key {
    use crate::event::Millis;

    pub fn push_time(out: &mut Vec<u8>, t: Millis) {
        // Flipping the sign bit makes signed big-endian sort as numbers.
        out.extend_from_slice(&((t as u64) ^ (1 << 63)).to_be_bytes());
    }

    pub fn read_time(bytes: &[u8]) -> Option<Millis> {
        let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        Some((u64::from_be_bytes(raw) ^ (1 << 63)) as i64)
    }

    pub fn push_str(out: &mut Vec<u8>, s: &str) {
        for &b in s.as_bytes() {
            out.push(b);
            if b == 0 {
                out.push(0xFF);
            }
        }
        out.extend_from_slice(&[0, 0]);
    }

    /// The inverse of `push_str`: the string and the rest of the key.
    pub fn read_str(bytes: &[u8]) -> Option<(String, &[u8])> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], bytes.get(i + 1)) {
                (0, Some(0)) => return Some((String::from_utf8(out).ok()?, &bytes[i + 2..])),
                (0, Some(0xFF)) => {
                    out.push(0);
                    i += 2;
                }
                (0, _) => return None,
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn composite_keys_sort_as_tuples() {
            let k = |t: i64, a: &str, b: &str| {
                let mut v = Vec::new();
                push_time(&mut v, t);
                push_str(&mut v, a);
                push_str(&mut v, b);
                v
            };
            assert!(k(-5, "z", "z") < k(3, "a", "a"));
            assert!(k(3, "a", "z") < k(3, "ab", "a"));
            assert!(k(3, "a\0b", "a") < k(3, "a\u{1}", "a"));
            let key = k(7, "x\0y", "q");
            assert_eq!(read_time(&key), Some(7));
            let (s, rest) = read_str(&key[8..]).unwrap();
            assert_eq!(s, "x\0y");
            assert_eq!(read_str(rest).unwrap().0, "q");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_uncommitted_writes_and_commit_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StateOptions::default();
        {
            let mut db = TaskDb::open(dir.path(), &Store::SKU_STAGE, &opts).unwrap();
            db.put(Store::Skus, b"a".to_vec(), &5i64).unwrap();
            assert_eq!(db.get::<i64>(Store::Skus, b"a").unwrap(), Some(5));
            db.commit().unwrap();
            db.delete(Store::Skus, b"a".to_vec()).unwrap();
            assert_eq!(db.get::<i64>(Store::Skus, b"a").unwrap(), None);
            db.put(Store::Skus, b"b".to_vec(), &6i64).unwrap();
            // Dropped without commit: the delete and the put are lost, as in a crash.
        }
        let db = TaskDb::open(dir.path(), &Store::SKU_STAGE, &opts).unwrap();
        assert_eq!(db.get::<i64>(Store::Skus, b"a").unwrap(), Some(5));
        assert_eq!(db.get::<i64>(Store::Skus, b"b").unwrap(), None);
        assert!(matches!(
            db.get::<i64>(Store::Orders, b"a"),
            Err(StateError::NotOpen("orders"))
        ));
    }

    #[test]
    fn scan_prefix_merges_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = TaskDb::open(dir.path(), &Store::SKU_STAGE, &StateOptions::default()).unwrap();
        db.put(Store::Reservations, b"s1/a".to_vec(), &1i64)
            .unwrap();
        db.put(Store::Reservations, b"s1/b".to_vec(), &2i64)
            .unwrap();
        db.put(Store::Reservations, b"s2/a".to_vec(), &3i64)
            .unwrap();
        db.commit().unwrap();
        db.delete(Store::Reservations, b"s1/a".to_vec()).unwrap();
        db.put(Store::Reservations, b"s1/c".to_vec(), &4i64)
            .unwrap();
        let keys: Vec<_> = db
            .scan_prefix(Store::Reservations, b"s1/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"s1/b".to_vec(), b"s1/c".to_vec()]);
        // The count sees the same: s1/b, s1/c and s2/a, with s1/a's delete uncommitted, and a
        // put over a committed key is no new entry.
        db.put(Store::Reservations, b"s2/a".to_vec(), &5i64)
            .unwrap();
        assert_eq!(db.count(Store::Reservations).unwrap(), 3);
        db.commit().unwrap();
        assert_eq!(db.count(Store::Reservations).unwrap(), 3);
        assert_eq!(db.count(Store::Skus).unwrap(), 0);
    }
}
