//! The records orderfold reads and writes, one Rust type per Avro schema in `schemas/`;
//! it owns their shape and nothing else (no rules, no encoding).
//!
//! Field names match the schemas, so the same types serialize to Avro (through the codec) and
//! to JSON (for `simulate`). A union body is externally tagged in Avro (by branch index) and
//! internally tagged with `"type"` in JSON, so `{"type": "OrderPlaced", ...}` reads naturally.

use serde::{Deserialize, Serialize};

/// Event time or stream time: epoch milliseconds.
pub type Millis = i64;

/// Declares a union body whose Avro form is the branch index and whose JSON form is an object
/// with a `"type"` field naming the branch. Avro's serde encoder is not human readable, JSON's
/// is, which is how one type serves both.
macro_rules! union_body {
    ($(#[$meta:meta])* $name:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $name { $($variant($ty)),+ }

        const _: () = {
            #[derive(Serialize)]
            #[serde(tag = "type")]
            enum TaggedRef<'a> { $($variant(&'a $ty)),+ }
            #[derive(Serialize)]
            enum IndexedRef<'a> { $($variant(&'a $ty)),+ }
            #[derive(Deserialize)]
            #[serde(tag = "type")]
            enum Tagged { $($variant($ty)),+ }
            #[derive(Deserialize)]
            enum Indexed { $($variant($ty)),+ }

            impl Serialize for $name {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    if s.is_human_readable() {
                        match self { $($name::$variant(v) => TaggedRef::$variant(v).serialize(s)),+ }
                    } else {
                        match self { $($name::$variant(v) => IndexedRef::$variant(v).serialize(s)),+ }
                    }
                }
            }

            impl<'de> Deserialize<'de> for $name {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    if d.is_human_readable() {
                        Ok(match Tagged::deserialize(d)? { $(Tagged::$variant(v) => $name::$variant(v)),+ })
                    } else {
                        Ok(match Indexed::deserialize(d)? { $(Indexed::$variant(v) => $name::$variant(v)),+ })
                    }
                }
            }
        };
    };
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// A value on the `orders` topic, keyed by `order_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub event_id: String,
    pub order_id: String,
    pub occurred_at: Millis,
    pub body: OrderBody,
}

union_body!(
    /// What happened to the order.
    OrderBody {
        OrderPlaced(OrderPlaced),
        OrderCancelled(OrderCancelled),
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub user_id: String,
    pub cart_id: String,
    pub currency: String,
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub reason: String,
}

/// A value on the `payments` topic, keyed by `order_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub event_id: String,
    pub order_id: String,
    pub payment_id: String,
    pub occurred_at: Millis,
    pub body: PaymentBody,
}

union_body!(
    /// The payment's outcome.
    PaymentBody {
        PaymentCaptured(PaymentCaptured),
        PaymentFailed(PaymentFailed),
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub reason: String,
}

/// A carrier scan on the `logistics` topic, keyed by `order_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogisticsEvent {
    pub event_id: String,
    pub order_id: String,
    pub shipment_id: String,
    pub occurred_at: Millis,
    pub status: TrackingCode,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum TrackingCode {
    CREATED,
    PICKED_UP,
    IN_TRANSIT,
    OUT_FOR_DELIVERY,
    DELIVERED,
    DELIVERY_FAILED,
    RETURNED,
}

impl TrackingCode {
    /// DELIVERED and RETURNED end a shipment: a later non-terminal scan never overwrites them.
    pub fn is_terminal(self) -> bool {
        matches!(self, TrackingCode::DELIVERED | TrackingCode::RETURNED)
    }
}

/// A stock movement on the `inventory` topic, keyed by `sku`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEvent {
    pub event_id: String,
    pub sku: String,
    pub warehouse_id: String,
    pub occurred_at: Millis,
    pub body: InventoryBody,
}

union_body!(
    /// Units received, or an absolute cycle count.
    InventoryBody {
        StockReceived(StockReceived),
        StockCounted(StockCounted),
    }
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReceived {
    pub quantity: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCounted {
    pub on_hand: i32,
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

/// On `reservation-expiry`, keyed by `order_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationExpired {
    pub event_id: String,
    pub order_id: String,
    pub reserved_at: Millis,
    pub expired_at: Millis,
    pub lines: Vec<ReservationLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationLine {
    pub sku: String,
    pub quantity: i32,
}

/// On `tracking-status`, keyed by `order_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackingStatus {
    pub event_id: String,
    pub order_id: String,
    pub shipment_id: String,
    pub status: TrackingCode,
    pub location: Option<String>,
    pub updated_at: Millis,
    pub delivery_attempts: i32,
    pub source_event_id: String,
}

/// On `oversell-alerts`, keyed by `sku`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OversellAlert {
    pub event_id: String,
    pub sku: String,
    pub kind: AlertKind,
    pub order_id: Option<String>,
    pub requested: i64,
    pub available: i64,
    pub on_hand: i64,
    pub reserved: i64,
    pub occurred_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum AlertKind {
    RESERVATION_REJECTED,
    OVERSOLD,
    NEGATIVE_AVAILABLE,
}

impl AlertKind {
    pub fn label(self) -> &'static str {
        match self {
            AlertKind::RESERVATION_REJECTED => "reservation_rejected",
            AlertKind::OVERSOLD => "oversold",
            AlertKind::NEGATIVE_AVAILABLE => "negative_available",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Internal: the repartition topic `<app>.sku-commands`
// ---------------------------------------------------------------------------------------------

/// A stock command from the order stage to the SKU stage, keyed by `sku`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuCommand {
    pub command_id: String,
    pub kind: SkuCommandKind,
    pub order_id: String,
    pub sku: String,
    pub quantity: i64,
    pub occurred_at: Millis,
    pub sequence: i32,
    pub cause_event_id: String,
    pub reason: Option<String>,
}

/// Declaration order is the tie-breaker rank nowhere: the SKU stage orders commands by
/// `(occurred_at, order_id, sku, sequence)`; `kind` only names the effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SkuCommandKind {
    Reserve,
    Commit,
    Release,
    Restock,
    /// The order was forgotten (`rules.final_retention_ms`): drop its reservation.
    Forget,
}

impl SkuCommandKind {
    pub fn name(self) -> &'static str {
        match self {
            SkuCommandKind::Reserve => "Reserve",
            SkuCommandKind::Commit => "Commit",
            SkuCommandKind::Release => "Release",
            SkuCommandKind::Restock => "Restock",
            SkuCommandKind::Forget => "Forget",
        }
    }
}

/// An order task's promise to the SKU stage: no later command from `source_partition` is
/// stamped below `stream_time` (none at all after `end_of_input`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub source_partition: i32,
    pub stream_time: Millis,
    pub end_of_input: bool,
}

/// Events for tests across modules and test binaries.
#[doc(hidden)]
pub mod fixtures {
    use super::*;

    /// Order `o-{n}` paid in full (1998 EUR) at `occurred_at` (event `pay-{n}`).
    pub fn captured(n: i64, occurred_at: Millis) -> PaymentEvent {
        PaymentEvent {
            event_id: format!("pay-{n}"),
            order_id: format!("o-{n}"),
            payment_id: format!("p-{n}"),
            occurred_at,
            body: PaymentBody::PaymentCaptured(PaymentCaptured {
                amount_minor: 1998,
                currency: "EUR".into(),
            }),
        }
    }

    /// Order `o-{n}` placed at `occurred_at` (event `e-{n}`): two of `s-1` at 9.99 EUR.
    pub fn placed(n: i64, occurred_at: Millis) -> OrderEvent {
        OrderEvent {
            event_id: format!("e-{n}"),
            order_id: format!("o-{n}"),
            occurred_at,
            body: OrderBody::OrderPlaced(OrderPlaced {
                user_id: "u".into(),
                cart_id: "c".into(),
                currency: "EUR".into(),
                lines: vec![OrderLine {
                    sku: "s-1".into(),
                    quantity: 2,
                    unit_price_minor: 999,
                }],
            }),
        }
    }
}
