//! The SKU rules of DOMAIN.md: reserve, commit, release and restock per order, stock receipts
//! and counts per warehouse, and the three oversell alerts. Pure: values in, values out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{
    AlertKind, InventoryBody, InventoryEvent, Millis, OversellAlert, SkuCommand, SkuCommandKind,
};
use crate::ids;

/// A SKU's stock totals. Reservations are kept per (sku, order) beside it, so a hot SKU's
/// state stays small however many orders reserve it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sku {
    /// Moved only by inventory events.
    pub on_hand_by_warehouse: BTreeMap<String, i64>,
    /// Units committed minus units restocked: sales come off the SKU total, not a warehouse.
    pub net_sold: i64,
    /// Sum of ACTIVE reservations.
    pub reserved: i64,
}

impl Sku {
    pub fn on_hand(&self) -> i64 {
        self.on_hand_by_warehouse.values().sum::<i64>() - self.net_sold
    }

    pub fn available(&self) -> i64 {
        self.on_hand() - self.reserved
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum ReservationStatus {
    ACTIVE,
    COMMITTED,
    RELEASED,
    REJECTED,
    RESTOCKED,
}

/// One order's claim on one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub quantity: i64,
    pub status: ReservationStatus,
}

/// What a command did: the reservation's new value (None: unchanged) and an alert, if any.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CommandEffect {
    pub reservation: Option<Reservation>,
    pub alert: Option<OversellAlert>,
    /// Forget: the reservation is to be deleted.
    pub forget: bool,
}

/// What caused an alert: a SKU command or an inventory record.
struct AlertSource<'a> {
    sku: &'a str,
    order_id: Option<&'a str>,
    source_event_id: &'a str,
    occurred_at: Millis,
}

impl<'a> AlertSource<'a> {
    fn command(cmd: &'a SkuCommand) -> Self {
        AlertSource {
            sku: &cmd.sku,
            order_id: Some(&cmd.order_id),
            source_event_id: &cmd.cause_event_id,
            occurred_at: cmd.occurred_at,
        }
    }

    fn inventory(event: &'a InventoryEvent) -> Self {
        AlertSource {
            sku: &event.sku,
            order_id: None,
            source_event_id: &event.event_id,
            occurred_at: event.occurred_at,
        }
    }

    /// The alert, with `available` as it was before the event and the rest as it is after.
    fn alert(
        &self,
        after: &Sku,
        kind: AlertKind,
        requested: i64,
        available_before: i64,
    ) -> OversellAlert {
        OversellAlert {
            event_id: ids::alert_event_id(self.source_event_id, self.sku),
            sku: self.sku.to_string(),
            kind,
            order_id: self.order_id.map(str::to_string),
            requested,
            available: available_before,
            on_hand: after.on_hand(),
            reserved: after.reserved,
            occurred_at: self.occurred_at,
        }
    }
}

/// Applies one Reserve, Commit, Release, Restock or Forget to `sku`, given the order's reservation.
pub fn apply_command(
    sku: &mut Sku,
    reservation: Option<Reservation>,
    cmd: &SkuCommand,
) -> CommandEffect {
    use ReservationStatus::*;
    let available_before = sku.available();
    match cmd.kind {
        SkuCommandKind::Reserve => {
            if reservation.is_some() {
                return CommandEffect::default();
            }
            if cmd.quantity <= available_before {
                sku.reserved += cmd.quantity;
                CommandEffect {
                    reservation: Some(Reservation {
                        quantity: cmd.quantity,
                        status: ACTIVE,
                    }),
                    alert: None,
                    forget: false,
                }
            } else {
                CommandEffect {
                    reservation: Some(Reservation {
                        quantity: cmd.quantity,
                        status: REJECTED,
                    }),
                    alert: Some(AlertSource::command(cmd).alert(
                        sku,
                        AlertKind::RESERVATION_REJECTED,
                        cmd.quantity,
                        available_before,
                    )),
                    forget: false,
                }
            }
        }
        SkuCommandKind::Commit => match reservation.map(|r| r.status) {
            Some(COMMITTED) | Some(RESTOCKED) => CommandEffect::default(),
            Some(ACTIVE) => {
                let qty = reservation.map_or(cmd.quantity, |r| r.quantity);
                sku.reserved -= qty;
                sku.net_sold += qty;
                CommandEffect {
                    reservation: Some(Reservation {
                        quantity: qty,
                        status: COMMITTED,
                    }),
                    alert: None,
                    forget: false,
                }
            }
            // Rejected, released, expired or never reserved: the money is taken, so the unit
            // is sold from whatever is available; without it, that is the real oversell.
            _ => {
                sku.net_sold += cmd.quantity;
                let oversold = (available_before < cmd.quantity).then(|| {
                    AlertSource::command(cmd).alert(
                        sku,
                        AlertKind::OVERSOLD,
                        cmd.quantity,
                        available_before,
                    )
                });
                CommandEffect {
                    reservation: Some(Reservation {
                        quantity: cmd.quantity,
                        status: COMMITTED,
                    }),
                    alert: oversold,
                    forget: false,
                }
            }
        },
        SkuCommandKind::Release => match reservation {
            Some(r) if r.status == ACTIVE => {
                sku.reserved -= r.quantity;
                CommandEffect {
                    reservation: Some(Reservation {
                        quantity: r.quantity,
                        status: RELEASED,
                    }),
                    alert: None,
                    forget: false,
                }
            }
            _ => CommandEffect::default(),
        },
        SkuCommandKind::Restock => match reservation {
            Some(r) if r.status == COMMITTED => {
                sku.net_sold -= r.quantity;
                CommandEffect {
                    reservation: Some(Reservation {
                        quantity: r.quantity,
                        status: RESTOCKED,
                    }),
                    alert: None,
                    forget: false,
                }
            }
            _ => CommandEffect::default(),
        },
        // The order stage forgets only final orders, whose reservations were settled by
        // commands stamped before the Forget. One still ACTIVE holds stock: it stays.
        SkuCommandKind::Forget => CommandEffect {
            forget: reservation.is_some_and(|r| r.status != ACTIVE),
            ..CommandEffect::default()
        },
    }
}

/// Applies one inventory record. A count that leaves `available` below zero raises
/// NEGATIVE_AVAILABLE, even when it already was.
pub fn apply_inventory(sku: &mut Sku, event: &InventoryEvent) -> Option<OversellAlert> {
    let available_before = sku.available();
    match &event.body {
        InventoryBody::StockReceived(r) => {
            *sku.on_hand_by_warehouse
                .entry(event.warehouse_id.clone())
                .or_insert(0) += i64::from(r.quantity);
            None
        }
        InventoryBody::StockCounted(c) => {
            sku.on_hand_by_warehouse
                .insert(event.warehouse_id.clone(), i64::from(c.on_hand));
            (sku.available() < 0).then(|| {
                AlertSource::inventory(event).alert(
                    sku,
                    AlertKind::NEGATIVE_AVAILABLE,
                    0,
                    available_before,
                )
            })
        }
    }
}
