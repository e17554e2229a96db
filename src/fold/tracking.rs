//! The tracking rules of DOMAIN.md: folding carrier scans into one status per order, newest
//! wins, DELIVERED and RETURNED are terminal. Pure: values in, values out.

use serde::{Deserialize, Serialize};

use crate::event::{LogisticsEvent, Millis, TrackingCode, TrackingStatus};
use crate::fold::Ignored;
use crate::ids;

/// An order's folded tracking state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracking {
    pub shipment_id: String,
    pub status: TrackingCode,
    pub location: Option<String>,
    pub updated_at: Millis,
    pub delivery_attempts: i32,
}

impl Tracking {
    /// "Shipped" for a cancel: any folded status other than CREATED.
    pub fn is_shipped(&self) -> bool {
        self.status != TrackingCode::CREATED
    }
}

/// Applies one scan. Returns the new tracking state and the TrackingStatus to emit, if the
/// status, location or delivery attempts changed (always for an order's first scan).
pub fn scan(
    current: Option<&Tracking>,
    event: &LogisticsEvent,
) -> Result<(Tracking, Option<TrackingStatus>), Ignored> {
    if let Some(t) = current {
        if event.occurred_at < t.updated_at {
            return Err(Ignored::ScanOutOfOrder);
        }
        if t.status.is_terminal() && !event.status.is_terminal() {
            return Err(Ignored::ScanAfterTerminal);
        }
    }
    let attempts_before = current.map_or(0, |t| t.delivery_attempts);
    let delivery_attempts = if event.status == TrackingCode::DELIVERY_FAILED {
        attempts_before.saturating_add(1)
    } else {
        attempts_before
    };
    let next = Tracking {
        shipment_id: event.shipment_id.clone(),
        status: event.status,
        location: event.location.clone(),
        updated_at: event.occurred_at,
        delivery_attempts,
    };
    let changed = match current {
        None => true,
        Some(t) => {
            t.status != next.status
                || t.location != next.location
                || t.delivery_attempts != next.delivery_attempts
        }
    };
    let emitted = changed.then(|| TrackingStatus {
        event_id: ids::tracking_event_id(&event.event_id),
        order_id: event.order_id.clone(),
        shipment_id: next.shipment_id.clone(),
        status: next.status,
        location: next.location.clone(),
        updated_at: next.updated_at,
        delivery_attempts: next.delivery_attempts,
        source_event_id: event.event_id.clone(),
    });
    Ok((next, emitted))
}
