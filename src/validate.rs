//! The rule checks of DOMAIN.md that send a decoded record to the dead-letter topic with
//! reason `validation`. It owns the list of rules; it runs before dedup, so a rejected record
//! never burns its event id.

use crate::event::{
    InventoryBody, InventoryEvent, LogisticsEvent, OrderBody, OrderEvent, PaymentEvent,
};

/// A broken rule, described for the dead-letter `detail` header.
pub type Violation = String;

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

pub fn order(key: Option<&[u8]>, e: &OrderEvent) -> Result<(), Violation> {
    non_empty("event_id", &e.event_id)?;
    non_empty("order_id", &e.order_id)?;
    key_matches("order_id", key, &e.order_id)?;
    positive_time(e.occurred_at)?;
    if let OrderBody::OrderPlaced(p) = &e.body {
        non_empty("user_id", &p.user_id)?;
        non_empty("cart_id", &p.cart_id)?;
        if p.lines.is_empty() {
            return Err("order has no lines".into());
        }
        for (i, line) in p.lines.iter().enumerate() {
            non_empty(&format!("lines[{i}].sku"), &line.sku)?;
            if line.quantity <= 0 {
                return Err(format!("lines[{i}].quantity {} <= 0", line.quantity));
            }
        }
    }
    Ok(())
}

pub fn payment(key: Option<&[u8]>, e: &PaymentEvent) -> Result<(), Violation> {
    non_empty("event_id", &e.event_id)?;
    non_empty("order_id", &e.order_id)?;
    non_empty("payment_id", &e.payment_id)?;
    key_matches("order_id", key, &e.order_id)?;
    positive_time(e.occurred_at)
}

pub fn logistics(key: Option<&[u8]>, e: &LogisticsEvent) -> Result<(), Violation> {
    non_empty("event_id", &e.event_id)?;
    non_empty("order_id", &e.order_id)?;
    non_empty("shipment_id", &e.shipment_id)?;
    key_matches("order_id", key, &e.order_id)?;
    positive_time(e.occurred_at)
}

pub fn inventory(key: Option<&[u8]>, e: &InventoryEvent) -> Result<(), Violation> {
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
        _ => Ok(()),
    }
}
