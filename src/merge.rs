//! Which record a task processes next. It owns the processing order that makes orderfold
//! deterministic: the order stage's merge of its input partitions by `(occurred_at, topic
//! rank)`, and the SKU stage's first-come-first-served order behind the watermark.

use crate::event::Millis;

/// The first unprocessed record of one input partition, as the merge sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Nothing buffered. `caught_up`: the partition is at its last known end offset, so the
    /// task need not wait for it.
    Empty {
        caught_up: bool,
    },
    /// A record that will be dead-lettered: handled as soon as it is at the head, without
    /// moving stream time.
    DeadLetter,
    Event {
        occurred_at: Millis,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    DeadLetter(usize),
    Record(usize),
    /// Some partition may still deliver an earlier record, or nothing is left.
    Wait,
}

/// The order stage's choice among its partitions' heads, indexed by topic rank (orders 0,
/// payments 1, logistics 2): the smallest `(occurred_at, rank)`, once no partition that is
/// behind could still hold an earlier record.
pub fn next_order_stage(heads: &[Head]) -> Next {
    if let Some(i) = heads.iter().position(|h| *h == Head::DeadLetter) {
        return Next::DeadLetter(i);
    }
    if heads.contains(&Head::Empty { caught_up: false }) {
        return Next::Wait;
    }
    heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| match h {
            Head::Event { occurred_at } => Some((*occurred_at, i)),
            _ => None,
        })
        .min()
        .map_or(Next::Wait, |(_, i)| Next::Record(i))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkuNext {
    Inventory,
    Command,
    Wait,
}

/// The SKU stage's choice between the inventory partition's head and the earliest pending
/// command (in `(occurred_at, order_id, sku, sequence)` order), given the minimum watermark
/// over all order partitions.
///
/// A command is ready once its time is strictly below the watermark: every command stamped
/// earlier has then arrived. An inventory record at `t` is ready once the watermark reaches `t`:
/// every command it must follow (those stamped before `t`) has then arrived. Between two ready
/// items, the inventory record goes first when its time is <= the command's.
pub fn next_sku_stage(
    inventory_at: Option<Millis>,
    command_at: Option<Millis>,
    watermark: Millis,
) -> SkuNext {
    let inventory = inventory_at.filter(|t| *t <= watermark);
    let command = command_at.filter(|t| *t < watermark);
    match (inventory, command) {
        (Some(i), Some(c)) if i <= c => SkuNext::Inventory,
        (_, Some(_)) => SkuNext::Command,
        (Some(_), None) => SkuNext::Inventory,
        (None, None) => SkuNext::Wait,
    }
}

/// The latest event time an order task of this instance may process up to: `alignment_ms`
/// past the position (`OrderTask::position`) of the slowest task that still has input to
/// read. That task's next record is at its position, so it can always move. The SKU stage
/// holds every command until the slowest order partition's watermark passes it, so a task
/// allowed to run ahead (a consumer can fetch one partition's whole backlog before the
/// others') only fills the SKU stage's pending set; held back, it waits with its input on the
/// broker instead. `Millis::MAX` when no task is behind.
pub fn aligned_until(behind: impl IntoIterator<Item = Millis>, alignment_ms: u64) -> Millis {
    behind.into_iter().min().map_or(Millis::MAX, |slowest| {
        slowest.saturating_add(i64::try_from(alignment_ms).unwrap_or(Millis::MAX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: Millis) -> Head {
        Head::Event { occurred_at: t }
    }

    #[test]
    fn order_stage_takes_smallest_time_then_rank() {
        assert_eq!(next_order_stage(&[ev(5), ev(3), ev(4)]), Next::Record(1));
        assert_eq!(next_order_stage(&[ev(3), ev(3), ev(3)]), Next::Record(0));
        assert_eq!(next_order_stage(&[ev(4), ev(3), ev(3)]), Next::Record(1));
    }

    #[test]
    fn order_stage_waits_for_a_partition_that_is_behind() {
        let behind = Head::Empty { caught_up: false };
        let done = Head::Empty { caught_up: true };
        assert_eq!(next_order_stage(&[ev(5), behind, ev(1)]), Next::Wait);
        assert_eq!(next_order_stage(&[ev(5), done, ev(7)]), Next::Record(0));
        assert_eq!(next_order_stage(&[done, done, done]), Next::Wait);
        // A dead letter never waits: it does not take part in the time order.
        assert_eq!(
            next_order_stage(&[ev(5), behind, Head::DeadLetter]),
            Next::DeadLetter(2)
        );
    }

    #[test]
    fn alignment_counts_from_the_slowest_task_behind() {
        assert_eq!(aligned_until([30, 10, 20], 5), 15);
        assert_eq!(aligned_until([], 5), Millis::MAX);
        // A task still waiting for its first record holds the others until it has one.
        assert_eq!(aligned_until([Millis::MIN, 10], 5), Millis::MIN + 5);
        assert_eq!(aligned_until([Millis::MAX - 1], 5), Millis::MAX);
    }

    #[test]
    fn sku_stage_applies_commands_strictly_below_the_watermark() {
        assert_eq!(next_sku_stage(None, Some(10), 10), SkuNext::Wait);
        assert_eq!(next_sku_stage(None, Some(9), 10), SkuNext::Command);
        assert_eq!(next_sku_stage(Some(10), None, 10), SkuNext::Inventory);
        assert_eq!(next_sku_stage(Some(11), Some(3), 10), SkuNext::Command);
        assert_eq!(next_sku_stage(Some(5), Some(5), 10), SkuNext::Inventory);
        assert_eq!(next_sku_stage(Some(6), Some(5), 10), SkuNext::Command);
        assert_eq!(next_sku_stage(Some(4), Some(11), 10), SkuNext::Inventory);
    }
}
