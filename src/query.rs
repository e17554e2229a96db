//! Answers "what does this instance hold for SKU X, for order Y" from the committed state of the
//! tasks it runs now, and names the partition of a key whose task runs elsewhere, so a caller or
//! a proxy can route the question. It reads RocksDB through handles shared with the tasks and
//! never sees a batch before it commits: the same answer `orderfold inspect` gives.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::partition::partition_for_key;
use crate::stage::order::{self as order_stage, OrderView};
use crate::stage::sku::{self as sku_stage, SkuPage};
use crate::stage::TaskError;
use crate::state::{Stage, TaskDb};

/// What the instance knows of a key.
#[derive(Debug)]
pub enum Answer<T> {
    Found(T),
    /// This instance runs the key's task, which has no such key.
    Missing {
        partition: u32,
    },
    /// The key's task is not running here (another instance's, or not assigned yet).
    Elsewhere {
        partition: u32,
    },
}

#[derive(Default)]
struct Open {
    order_partitions: u32,
    sku_partitions: u32,
    order: BTreeMap<u32, TaskDb>,
    sku: BTreeMap<u32, TaskDb>,
}

/// The read handles of the tasks running now. The runtime adds a task once it is restored and
/// removes it before the task closes; a query holds the read lock while it reads, so a task's
/// database is never closed under a query nor kept open after its task.
#[derive(Default)]
pub struct Queries {
    open: RwLock<Open>,
}

impl std::fmt::Debug for Queries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queries").finish_non_exhaustive()
    }
}

impl Queries {
    /// How many partitions each stage has, which decides where a key lives.
    pub fn set_layout(&self, order_partitions: u32, sku_partitions: u32) {
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        open.order_partitions = order_partitions;
        open.sku_partitions = sku_partitions;
    }

    pub fn add(&self, stage: Stage, partition: u32, reader: TaskDb) {
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        match stage {
            Stage::Order => open.order.insert(partition, reader),
            Stage::Sku => open.sku.insert(partition, reader),
        };
    }

    /// Forgets every task (before the runtime closes them).
    pub fn clear(&self) {
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        open.order.clear();
        open.sku.clear();
    }

    /// A page of the SKU's view: at most `limit` reservations, those after order id `after`.
    /// The read lock (which a rebalance's `clear` waits for) is held for that page only.
    pub fn sku(
        &self,
        sku: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Answer<SkuPage>, TaskError> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        let partition = partition_for_key(sku.as_bytes(), open.sku_partitions);
        let Some(db) = open.sku.get(&partition) else {
            return Ok(Answer::Elsewhere { partition });
        };
        Ok(match sku_stage::sku_page(db, sku, after, limit)? {
            Some(view) => Answer::Found(view),
            None => Answer::Missing { partition },
        })
    }

    pub fn order(&self, order_id: &str) -> Result<Answer<OrderView>, TaskError> {
        let open = self.open.read().unwrap_or_else(|e| e.into_inner());
        let partition = partition_for_key(order_id.as_bytes(), open.order_partitions);
        let Some(db) = open.order.get(&partition) else {
            return Ok(Answer::Elsewhere { partition });
        };
        Ok(match order_stage::order_view(db, order_id)? {
            Some(view) => Answer::Found(view),
            None => Answer::Missing { partition },
        })
    }
}
