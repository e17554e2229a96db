//! The order rules of DOMAIN.md: placing, paying, failing, cancelling and expiring an order,
//! and the SKU commands each transition asks of the SKU stage. Pure: values in, values out.

use serde::{Deserialize, Serialize};

use crate::event::TrackingCode;
use crate::event::{
    Millis, OrderEvent, OrderPlaced, ReservationExpired, ReservationLine, SkuCommand,
    SkuCommandKind,
};
use crate::fold::tracking::Tracking;
use crate::fold::Ignored;
use crate::ids;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum OrderStatus {
    PENDING_PAYMENT,
    PAID,
    PAYMENT_FAILED,
    EXPIRED,
    CANCELLED,
}

/// One order as the order stage keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub status: OrderStatus,
    /// occurred_at of the OrderPlaced.
    pub placed_at: Millis,
    /// `placed_at + reservation_ttl`; a capture at or before it is on time.
    pub deadline: Millis,
    /// The order's lines summed per sku, in first-appearance order.
    pub lines: Vec<ReservationLine>,
    pub placed_event_id: String,
    /// Next per-order sequence number for SKU commands.
    pub next_sequence: i32,
}

/// Sums an order's lines per sku, keeping the order in which each sku first appears. Quantities
/// are validated positive before the fold; saturation only guards absurd sums.
pub fn lines_per_sku(placed: &OrderPlaced) -> Vec<ReservationLine> {
    let mut lines: Vec<ReservationLine> = Vec::with_capacity(placed.lines.len());
    for line in &placed.lines {
        match lines.iter_mut().find(|l| l.sku == line.sku) {
            Some(l) => l.quantity = l.quantity.saturating_add(line.quantity),
            None => lines.push(ReservationLine {
                sku: line.sku.clone(),
                quantity: line.quantity,
            }),
        }
    }
    lines
}

impl Order {
    /// One command per line, in line order, each with the next sequence number.
    fn command_per_line(
        &mut self,
        kind: SkuCommandKind,
        stamp: Millis,
        cause_event_id: &str,
        reason: Option<&str>,
        out: &mut Vec<SkuCommand>,
    ) {
        for line in &self.lines {
            out.push(SkuCommand {
                command_id: ids::command_id(kind, &self.order_id, &line.sku),
                kind,
                order_id: self.order_id.clone(),
                sku: line.sku.clone(),
                quantity: i64::from(line.quantity),
                occurred_at: stamp,
                sequence: self.next_sequence,
                cause_event_id: cause_event_id.to_string(),
                reason: reason.map(str::to_string),
            });
            self.next_sequence = self.next_sequence.saturating_add(1);
        }
    }
}

/// OrderPlaced. `existing` is the order's state if any; a second OrderPlaced is ignored.
/// On success the order is PENDING_PAYMENT with a deadline, and every line is reserved.
pub fn place(
    existing: Option<&Order>,
    event: &OrderEvent,
    placed: &OrderPlaced,
    reservation_ttl_ms: Millis,
    stamp: Millis,
    out: &mut Vec<SkuCommand>,
) -> Result<Order, Ignored> {
    if existing.is_some() {
        return Err(Ignored::OrderPlacedAgain);
    }
    let mut order = Order {
        order_id: event.order_id.clone(),
        status: OrderStatus::PENDING_PAYMENT,
        placed_at: event.occurred_at,
        deadline: event.occurred_at.saturating_add(reservation_ttl_ms),
        lines: lines_per_sku(placed),
        placed_event_id: event.event_id.clone(),
        next_sequence: 0,
    };
    order.command_per_line(SkuCommandKind::Reserve, stamp, &event.event_id, None, out);
    Ok(order)
}

/// PaymentCaptured: PENDING_PAYMENT, EXPIRED or PAYMENT_FAILED become PAID and every line is
/// committed (a late capture commits from available stock or raises OVERSOLD downstream).
pub fn capture(
    order: &mut Order,
    event_id: &str,
    stamp: Millis,
    out: &mut Vec<SkuCommand>,
) -> Result<(), Ignored> {
    match order.status {
        OrderStatus::PENDING_PAYMENT | OrderStatus::EXPIRED | OrderStatus::PAYMENT_FAILED => {
            order.status = OrderStatus::PAID;
            order.command_per_line(SkuCommandKind::Commit, stamp, event_id, None, out);
            Ok(())
        }
        OrderStatus::PAID => Err(Ignored::CaptureOnPaid),
        OrderStatus::CANCELLED => Err(Ignored::CaptureOnCancelled),
    }
}

/// PaymentFailed: only a PENDING_PAYMENT order fails; its reservations are released.
pub fn fail(
    order: &mut Order,
    event_id: &str,
    stamp: Millis,
    out: &mut Vec<SkuCommand>,
) -> Result<(), Ignored> {
    if order.status != OrderStatus::PENDING_PAYMENT {
        return Err(Ignored::FailureNotPending);
    }
    order.status = OrderStatus::PAYMENT_FAILED;
    order.command_per_line(
        SkuCommandKind::Release,
        stamp,
        event_id,
        Some("payment_failed"),
        out,
    );
    Ok(())
}

/// OrderCancelled. `shipped` is true when the order's folded tracking status is anything but
/// CREATED at the moment the cancel is processed.
pub fn cancel(
    order: &mut Order,
    event_id: &str,
    shipped: bool,
    stamp: Millis,
    out: &mut Vec<SkuCommand>,
) -> Result<(), Ignored> {
    match order.status {
        OrderStatus::PENDING_PAYMENT => {
            order.status = OrderStatus::CANCELLED;
            order.command_per_line(
                SkuCommandKind::Release,
                stamp,
                event_id,
                Some("cancelled"),
                out,
            );
            Ok(())
        }
        OrderStatus::PAID if shipped => Err(Ignored::CancelAfterShipping),
        OrderStatus::PAID => {
            order.status = OrderStatus::CANCELLED;
            order.command_per_line(SkuCommandKind::Restock, stamp, event_id, None, out);
            Ok(())
        }
        // Already released by the failure or the expiry: nothing left to give back.
        OrderStatus::EXPIRED | OrderStatus::PAYMENT_FAILED => {
            order.status = OrderStatus::CANCELLED;
            Ok(())
        }
        OrderStatus::CANCELLED => Err(Ignored::CancelOnCancelled),
    }
}

/// The reservation timer at the order's deadline. A PENDING_PAYMENT order expires: its lines
/// are released at `deadline + 1 ms` (the first instant the reservation is no longer valid) and
/// a ReservationExpired is emitted. Any other status means the timer is stale: nothing.
///
/// `stream_time` only matters for an order whose OrderPlaced arrived after its own deadline in
/// stream time: its Release is stamped no earlier than the task's watermark.
pub fn expire(
    order: &mut Order,
    stream_time: Millis,
    out: &mut Vec<SkuCommand>,
) -> Option<ReservationExpired> {
    if order.status != OrderStatus::PENDING_PAYMENT {
        return None;
    }
    order.status = OrderStatus::EXPIRED;
    let cause = ids::expiry_event_id(&order.order_id);
    let stamp = order.deadline.saturating_add(1).max(stream_time);
    order.command_per_line(SkuCommandKind::Release, stamp, &cause, Some("expired"), out);
    Some(ReservationExpired {
        event_id: cause,
        order_id: order.order_id.clone(),
        reserved_at: order.placed_at,
        expired_at: order.deadline,
        lines: order.lines.clone(),
    })
}

/// Whether an order id's state is final, so that `rules.final_retention_ms` after its last
/// change it may be forgotten: nothing expected can still change it. A paid order is final once
/// its parcel is delivered or returned (a return may still follow a delivery: it is a change,
/// and the retention starts again); a cancelled, expired or failed order at once (a late
/// capture of an expired or failed order is a change too); an id with tracking and no order
/// once the parcel is delivered or returned. An unpaid order never is: its timer is pending.
pub fn is_final(order: Option<&Order>, tracking: Option<&Tracking>) -> bool {
    let delivered = tracking
        .is_some_and(|t| matches!(t.status, TrackingCode::DELIVERED | TrackingCode::RETURNED));
    match order.map(|o| o.status) {
        None | Some(OrderStatus::PAID) => delivered,
        Some(OrderStatus::PENDING_PAYMENT) => false,
        Some(OrderStatus::PAYMENT_FAILED | OrderStatus::EXPIRED | OrderStatus::CANCELLED) => true,
    }
}

/// Forgets an order at retention instant `at`: one Forget per line, stamped `at + 1 ms` like
/// an expiry's Release, so that every command sent for the order before lies below it.
pub fn forget(order: &mut Order, at: Millis, out: &mut Vec<SkuCommand>) {
    let cause = order.placed_event_id.clone();
    order.command_per_line(
        SkuCommandKind::Forget,
        at.saturating_add(1),
        &cause,
        None,
        out,
    );
}
