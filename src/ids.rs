//! Deterministic ids for everything orderfold derives, so a replay or a retried batch writes
//! byte-identical records that any consumer can deduplicate. It owns the id names; nothing
//! else may format an output's `event_id` or a command's id.

use uuid::Uuid;

use crate::event::SkuCommandKind;

/// The RFC 4122 URL namespace (`6ba7b811-9dad-11d1-80b4-00c04fd430c8`).
const NAMESPACE: Uuid = Uuid::NAMESPACE_URL;

fn v5(name: &str) -> String {
    Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// `ReservationExpired.event_id`: UUIDv5 of `expiry:<order_id>`.
pub fn expiry_event_id(order_id: &str) -> String {
    v5(&format!("expiry:{order_id}"))
}

/// `TrackingStatus.event_id`: UUIDv5 of `tracking:<scan event_id>`.
pub fn tracking_event_id(scan_event_id: &str) -> String {
    v5(&format!("tracking:{scan_event_id}"))
}

/// `OversellAlert.event_id`: UUIDv5 of `alert:<source event_id>:<sku>`.
pub fn alert_event_id(source_event_id: &str, sku: &str) -> String {
    v5(&format!("alert:{source_event_id}:{sku}"))
}

/// A SKU command's id, `<Kind>:<order_id>:<sku>`: each kind happens at most once per
/// (order, sku), so the id is unique and a re-emitted command deduplicates against it.
pub fn command_id(kind: SkuCommandKind, order_id: &str, sku: &str) -> String {
    format!("{}:{order_id}:{sku}", kind.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v5_in_the_url_namespace() {
        let id = expiry_event_id("o-1");
        let parsed = Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
        assert_eq!(
            parsed,
            Uuid::new_v5(
                &Uuid::parse_str("6ba7b811-9dad-11d1-80b4-00c04fd430c8").unwrap(),
                b"expiry:o-1"
            )
        );
        assert_ne!(tracking_event_id("x"), alert_event_id("x", "s"));
        assert_eq!(alert_event_id("e", "s"), alert_event_id("e", "s"));
        assert_eq!(command_id(SkuCommandKind::Restock, "o", "s"), "Restock:o:s");
    }
}
