//! The rule checks of DOMAIN.md that send a decoded record to the dead-letter topic with
//! reason `validation`, and the bounds of `[limits]` on a record's size, its strings, its lines
//! and its quantities, which keep memory and arithmetic bounded whatever arrives. It owns the
//! list of rules; it runs before dedup, so a rejected record never burns its event id.

use crate::event::{
    InventoryBody, InventoryEvent, LogisticsEvent, OrderBody, OrderEvent, PaymentBody, PaymentEvent,
};

/// A broken rule, described for the dead-letter `detail` header.
pub type Violation = String;

/// The config's bounds on one input record, and on what its key's state and its dead letter
/// may grow to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub record_bytes_max: usize,
    pub order_lines_max: usize,
    pub string_bytes_max: usize,
    pub quantity_max: i32,
    pub future_skew_ms: i64,
    pub dead_letter_bytes_max: usize,
    pub orphans_per_order_max: usize,
    pub warehouses_per_sku_max: usize,
}

impl Bounds {
    pub fn from_config(config: &crate::config::Config) -> Bounds {
        let l = &config.limits;
        Bounds {
            record_bytes_max: l.record_bytes_max,
            order_lines_max: l.order_lines_max,
            string_bytes_max: l.string_bytes_max,
            quantity_max: l.quantity_max,
            future_skew_ms: l.future_skew_ms,
            dead_letter_bytes_max: l.dead_letter_bytes_max,
            orphans_per_order_max: l.orphans_per_order_max,
            warehouses_per_sku_max: l.warehouses_per_sku_max,
        }
    }

    /// An `occurred_at` no further ahead of the record's Kafka timestamp than
    /// `limits.future_skew_ms`. Checked after decoding, beside the rules, so a skewed record
    /// is dead-lettered before it can move stream time.
    pub fn skew(&self, occurred_at: i64, timestamp_ms: Option<i64>) -> Result<(), Violation> {
        let Some(ts) = timestamp_ms.filter(|ts| *ts >= 0) else {
            return Ok(());
        };
        let ahead_ms = occurred_at.saturating_sub(ts);
        if ahead_ms > self.future_skew_ms {
            return Err(format!(
                "occurred_at {occurred_at} is {ahead_ms} ms ahead of the record timestamp {ts}, \
                 over limits.future_skew_ms ({})",
                self.future_skew_ms
            ));
        }
        Ok(())
    }

    /// Checked before a record is decoded, so an oversized one is never read.
    pub fn record_size(&self, bytes: &[u8]) -> Result<(), Violation> {
        if bytes.len() > self.record_bytes_max {
            return Err(format!(
                "record of {} bytes is over limits.record_bytes_max ({})",
                bytes.len(),
                self.record_bytes_max
            ));
        }
        Ok(())
    }

    fn strings<'a>(
        &self,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), Violation> {
        for (field, value) in fields {
            if value.len() > self.string_bytes_max {
                return Err(format!(
                    "{field} of {} bytes is over limits.string_bytes_max ({})",
                    value.len(),
                    self.string_bytes_max
                ));
            }
        }
        Ok(())
    }

    fn quantity(&self, field: &str, q: i32) -> Result<(), Violation> {
        if q > self.quantity_max {
            return Err(format!(
                "{field} {q} is over limits.quantity_max ({})",
                self.quantity_max
            ));
        }
        Ok(())
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds::from_config(&crate::config::Config::default())
    }
}

fn non_empty(field: &str, value: &str) -> Result<(), Violation> {
    if value.is_empty() {
        Err(format!("{field} is empty"))
    } else {
        Ok(())
    }
}

fn positive_time(occurred_at: i64) -> Result<(), Violation> {
    if occurred_at <= 0 {
        Err(format!("occurred_at {occurred_at} is not after the epoch"))
    } else {
        Ok(())
    }
}

fn key_matches(field: &str, key: Option<&[u8]>, value: &str) -> Result<(), Violation> {
    match key {
        Some(k) if k == value.as_bytes() => Ok(()),
        Some(k) => Err(format!(
            "record key {:?} differs from {field} {value:?}",
            String::from_utf8_lossy(k)
        )),
        None => Err(format!("record has no key; expected {field} {value:?}")),
    }
}

pub fn order(key: Option<&[u8]>, e: &OrderEvent, b: &Bounds) -> Result<(), Violation> {
    b.strings([("event_id", e.event_id.as_str()), ("order_id", &e.order_id)])?;
    non_empty("event_id", &e.event_id)?;
    non_empty("order_id", &e.order_id)?;
    key_matches("order_id", key, &e.order_id)?;
    positive_time(e.occurred_at)?;
    match &e.body {
        OrderBody::OrderPlaced(p) => {
            b.strings([
                ("user_id", p.user_id.as_str()),
                ("cart_id", &p.cart_id),
                ("currency", &p.currency),
            ])?;
            non_empty("user_id", &p.user_id)?;
            non_empty("cart_id", &p.cart_id)?;
            if p.lines.is_empty() {
                return Err("order has no lines".into());
            }
            if p.lines.len() > b.order_lines_max {
                return Err(format!(
                    "order of {} lines is over limits.order_lines_max ({})",
                    p.lines.len(),
                    b.order_lines_max
                ));
            }
            for (i, line) in p.lines.iter().enumerate() {
                b.strings([("lines[].sku", line.sku.as_str())])?;
                non_empty(&format!("lines[{i}].sku"), &line.sku)?;
                if line.quantity <= 0 {
                    return Err(format!("lines[{i}].quantity {} <= 0", line.quantity));
                }
                b.quantity(&format!("lines[{i}].quantity"), line.quantity)?;
            }
        }
        OrderBody::OrderCancelled(c) => b.strings([("reason", c.reason.as_str())])?,
    }
    Ok(())
}

pub fn payment(key: Option<&[u8]>, e: &PaymentEvent, b: &Bounds) -> Result<(), Violation> {
    b.strings([
        ("event_id", e.event_id.as_str()),
        ("order_id", &e.order_id),
        ("payment_id", &e.payment_id),
    ])?;
    match &e.body {
        PaymentBody::PaymentCaptured(c) => b.strings([("currency", c.currency.as_str())])?,
        PaymentBody::PaymentFailed(f) => b.strings([("reason", f.reason.as_str())])?,
    }
    non_empty("event_id", &e.event_id)?;
    non_empty("order_id", &e.order_id)?;
    non_empty("payment_id", &e.payment_id)?;
    key_matches("order_id", key, &e.order_id)?;
    positive_time(e.occurred_at)
}

pub fn logistics(key: Option<&[u8]>, e: &LogisticsEvent, b: &Bounds) -> Result<(), Violation> {
    b.strings([
        ("event_id", e.event_id.as_str()),
        ("order_id", &e.order_id),
        ("shipment_id", &e.shipment_id),
        ("location", e.location.as_deref().unwrap_or_default()),
        ("detail", e.detail.as_deref().unwrap_or_default()),
    ])?;
    non_empty("event_id", &e.event_id)?;
    non_empty("order_id", &e.order_id)?;
    non_empty("shipment_id", &e.shipment_id)?;
    key_matches("order_id", key, &e.order_id)?;
    positive_time(e.occurred_at)
}

pub fn inventory(key: Option<&[u8]>, e: &InventoryEvent, b: &Bounds) -> Result<(), Violation> {
    b.strings([
        ("event_id", e.event_id.as_str()),
        ("sku", &e.sku),
        ("warehouse_id", &e.warehouse_id),
    ])?;
    non_empty("event_id", &e.event_id)?;
    non_empty("sku", &e.sku)?;
    non_empty("warehouse_id", &e.warehouse_id)?;
    key_matches("sku", key, &e.sku)?;
    positive_time(e.occurred_at)?;
    match &e.body {
        InventoryBody::StockReceived(r) if r.quantity <= 0 => {
            Err(format!("StockReceived quantity {} <= 0", r.quantity))
        }
        InventoryBody::StockCounted(c) if c.on_hand < 0 => {
            Err(format!("StockCounted on_hand {} < 0", c.on_hand))
        }
        InventoryBody::StockReceived(r) => b.quantity("StockReceived quantity", r.quantity),
        InventoryBody::StockCounted(c) => b.quantity("StockCounted on_hand", c.on_hand),
    }
}
