//! A seeded flash-sale workload: Zipf-popular SKUs with a few hot ones and little stock,
//! payment failures, abandoned carts, late captures, cancellations, carrier scans (some out of
//! order), stock receipts and counts, duplicates and a small rate of malformed records. The
//! same seed gives the same log, byte for byte. It owns only the shape of the load.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::driver::topics;
use crate::event::*;

/// What to generate. Ratios are per order unless said otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadSpec {
    pub seed: u64,
    pub orders: usize,
    pub skus: usize,
    /// The most popular SKUs, stocked with only a few units each: they oversell.
    pub hot_skus: usize,
    pub hot_stock: i32,
    pub stock_per_sku: i32,
    /// Zipf exponent of SKU popularity.
    pub zipf_exponent: f64,
    pub orders_per_sec: u64,
    pub start_ms: Millis,
    pub reservation_ttl_ms: Millis,
    pub payment_failure_ratio: f64,
    pub abandon_ratio: f64,
    /// Of captures: paid after the deadline.
    pub late_capture_ratio: f64,
    /// Of paid orders: cancelled (some before shipping, some after).
    pub cancel_ratio: f64,
    /// Of all events: sent twice with the same event id.
    pub duplicate_ratio: f64,
    /// Of scans: delivered behind a newer scan.
    pub out_of_order_scan_ratio: f64,
    /// Of all records: undecodable or breaking a rule.
    pub malformed_ratio: f64,
    /// Of payments: arrive before their order (orphans that the order later releases).
    pub orphan_ratio: f64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            seed: 42,
            orders: 10_000,
            skus: 1_000,
            hot_skus: 5,
            hot_stock: 20,
            stock_per_sku: 500,
            zipf_exponent: 1.1,
            orders_per_sec: 1_000,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            reservation_ttl_ms: 300_000,
            payment_failure_ratio: 0.2,
            abandon_ratio: 0.1,
            late_capture_ratio: 0.02,
            cancel_ratio: 0.03,
            duplicate_ratio: 0.01,
            out_of_order_scan_ratio: 0.02,
            malformed_ratio: 0.001,
            orphan_ratio: 0.002,
        }
    }
}

/// One generated record, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Order(OrderEvent),
    Payment(PaymentEvent),
    Logistics(LogisticsEvent),
    Inventory(InventoryEvent),
    /// Bytes that are not a valid record of the topic.
    Malformed(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub topic: &'static str,
    pub key: Option<String>,
    pub payload: Payload,
}

impl Generated {
    /// The record's value as Kafka would carry it.
    pub fn encode(&self, codec: &Codec) -> Result<Vec<u8>, apache_avro::Error> {
        match &self.payload {
            Payload::Order(e) => codec.encode(e),
            Payload::Payment(e) => codec.encode(e),
            Payload::Logistics(e) => codec.encode(e),
            Payload::Inventory(e) => codec.encode(e),
            Payload::Malformed(b) => Ok(b.clone()),
        }
    }

    /// The record as a `simulate` input line.
    pub fn to_json_line(&self) -> String {
        let value = match &self.payload {
            Payload::Order(e) => serde_json::to_value(e),
            Payload::Payment(e) => serde_json::to_value(e),
            Payload::Logistics(e) => serde_json::to_value(e),
            Payload::Inventory(e) => serde_json::to_value(e),
            Payload::Malformed(b) => Ok(serde_json::Value::String(
                String::from_utf8_lossy(b).into_owned(),
            )),
        }
        .unwrap_or(serde_json::Value::Null);
        serde_json::json!({"topic": self.topic, "key": self.key, "value": value}).to_string()
    }
}

/// Each record with the instant it is published (its place in the log); sorting by it gives
/// partitions in occurred_at order for orders, payments and inventory.
struct Timed {
    publish_at: Millis,
    seq: u64,
    record: Generated,
}

struct Gen {
    rng: ChaCha8Rng,
    out: Vec<Timed>,
    seq: u64,
    spec: WorkloadSpec,
}

impl Gen {
    fn push(&mut self, publish_at: Millis, record: Generated) {
        self.seq += 1;
        self.out.push(Timed {
            publish_at,
            seq: self.seq,
            record,
        });
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }

    fn between(&mut self, lo: Millis, hi: Millis) -> Millis {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..hi)
        }
    }

    /// Adds the record, and sometimes its duplicate a little later.
    fn emit(&mut self, at: Millis, record: Generated) {
        if self.chance(self.spec.duplicate_ratio) {
            let later = at + self.between(1, 2_000);
            self.push(later, record.clone());
        }
        self.push(at, record);
    }
}

fn sku_name(i: usize) -> String {
    format!("sku-{i:06}")
}

/// The workload for `spec`, in publish order.
pub fn generate(spec: &WorkloadSpec) -> Vec<Generated> {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(spec.seed),
        out: Vec::new(),
        seq: 0,
        spec: spec.clone(),
    };
    let skus = spec.skus.max(1);
    let zipf = Zipf::new(skus as f64, spec.zipf_exponent.max(0.01)).ok();
    let start = spec.start_ms;
    // Opening stock: hot SKUs (the most popular ranks) get a handful of units.
    for i in 0..skus {
        let qty = if i < spec.hot_skus {
            spec.hot_stock
        } else {
            spec.stock_per_sku
        };
        let sku = sku_name(i);
        let e = InventoryEvent {
            event_id: format!("inv-open-{i}"),
            sku: sku.clone(),
            warehouse_id: format!("wh-{}", i % 3),
            occurred_at: start - 60_000 + (i as Millis % 1_000),
            body: InventoryBody::StockReceived(StockReceived {
                quantity: qty.max(1),
            }),
        };
        g.push(
            e.occurred_at,
            Generated {
                topic: topics::INVENTORY,
                key: Some(sku),
                payload: Payload::Inventory(e),
            },
        );
    }
    let interval = (1_000 / spec.orders_per_sec.max(1) as i64).max(1);
    let ttl = spec.reservation_ttl_ms;
    for n in 0..spec.orders {
        let placed_at = start + n as Millis * interval + g.between(0, interval);
        let order_id = format!("o-{n:08}");
        let line_count = 1 + g.rng.random_range(0..3usize);
        let lines = (0..line_count)
            .map(|_| {
                let rank = zipf.as_ref().map_or(1.0, |z| z.sample(&mut g.rng)) as usize;
                OrderLine {
                    sku: sku_name(rank.clamp(1, skus) - 1),
                    quantity: 1 + g.rng.random_range(0..2),
                    unit_price_minor: 1_000 + g.rng.random_range(0..50_000),
                }
            })
            .collect();
        let placed = OrderEvent {
            event_id: format!("{order_id}-placed"),
            order_id: order_id.clone(),
            occurred_at: placed_at,
            body: OrderBody::OrderPlaced(OrderPlaced {
                user_id: format!("u-{}", g.rng.random_range(0..100_000)),
                cart_id: format!("c-{n}"),
                currency: "EUR".into(),
                lines,
            }),
        };
        let orphan = g.chance(spec.orphan_ratio);
        g.emit(
            placed_at,
            Generated {
                topic: topics::ORDERS,
                key: Some(order_id.clone()),
                payload: Payload::Order(placed),
            },
        );

        let roll = g.rng.random::<f64>();
        let payment = |event_id: String, at: Millis, body: PaymentBody| PaymentEvent {
            event_id,
            order_id: order_id.clone(),
            payment_id: format!("pay-{n}"),
            occurred_at: at,
            body,
        };
        if roll < spec.abandon_ratio {
            continue; // The cart is abandoned: the reservation expires.
        }
        if roll < spec.abandon_ratio + spec.payment_failure_ratio {
            let at = placed_at + g.between(1_000, ttl / 2);
            let e = payment(
                format!("{order_id}-failed"),
                at,
                PaymentBody::PaymentFailed(PaymentFailed {
                    reason: "card_declined".into(),
                }),
            );
            g.emit(
                at,
                Generated {
                    topic: topics::PAYMENTS,
                    key: Some(order_id.clone()),
                    payload: Payload::Payment(e),
                },
            );
            continue;
        }
        let late = g.chance(spec.late_capture_ratio);
        let paid_at = if late {
            placed_at + ttl + g.between(1, 60_000)
        } else if orphan {
            // Published before its order: parked, then applied when the order arrives.
            placed_at - g.between(1, 1_000)
        } else {
            placed_at + g.between(1_000, ttl / 3)
        };
        let e = payment(
            format!("{order_id}-captured"),
            paid_at,
            PaymentBody::PaymentCaptured(PaymentCaptured {
                amount_minor: 1_000,
                currency: "EUR".into(),
            }),
        );
        g.emit(
            paid_at,
            Generated {
                topic: topics::PAYMENTS,
                key: Some(order_id.clone()),
                payload: Payload::Payment(e),
            },
        );

        let cancelled = g.chance(spec.cancel_ratio);
        let cancel_before_ship = g.chance(0.5);
        let shipment_id = format!("sh-{n}");
        let mut at = paid_at.max(placed_at) + g.between(10_000, 120_000);
        let steps: &[TrackingCode] = if cancelled && cancel_before_ship {
            &[TrackingCode::CREATED]
        } else if g.chance(0.05) {
            &[
                TrackingCode::CREATED,
                TrackingCode::PICKED_UP,
                TrackingCode::IN_TRANSIT,
                TrackingCode::OUT_FOR_DELIVERY,
                TrackingCode::DELIVERY_FAILED,
                TrackingCode::OUT_FOR_DELIVERY,
                TrackingCode::DELIVERED,
            ]
        } else {
            &[
                TrackingCode::CREATED,
                TrackingCode::PICKED_UP,
                TrackingCode::IN_TRANSIT,
                TrackingCode::DELIVERED,
            ]
        };
        for (i, status) in steps.iter().enumerate() {
            let scan = LogisticsEvent {
                event_id: format!("{order_id}-scan-{i}"),
                order_id: order_id.clone(),
                shipment_id: shipment_id.clone(),
                occurred_at: at,
                status: *status,
                location: Some(format!("hub-{}", (n + i) % 17)),
                detail: None,
            };
            // An out-of-order scan is published after the next one.
            let publish = if g.chance(spec.out_of_order_scan_ratio) {
                at + 90_000
            } else {
                at
            };
            g.emit(
                publish,
                Generated {
                    topic: topics::LOGISTICS,
                    key: Some(order_id.clone()),
                    payload: Payload::Logistics(scan),
                },
            );
            at += g.between(30_000, 600_000);
        }
        if cancelled {
            let cancel_at = if cancel_before_ship {
                at - 20_000
            } else {
                at + 1_000
            };
            let e = OrderEvent {
                event_id: format!("{order_id}-cancelled"),
                order_id: order_id.clone(),
                occurred_at: cancel_at.max(paid_at + 1),
                body: OrderBody::OrderCancelled(OrderCancelled {
                    reason: "customer".into(),
                }),
            };
            g.emit(
                e.occurred_at,
                Generated {
                    topic: topics::ORDERS,
                    key: Some(order_id.clone()),
                    payload: Payload::Order(e),
                },
            );
        }
    }
    // Restocks and cycle counts during the sale, some of which find fewer units than expected.
    let end = start + spec.orders as Millis * interval;
    let movements = (spec.orders / 50).max(1);
    for m in 0..movements {
        let at = g.between(start, end.max(start + 1));
        let i = g.rng.random_range(0..skus.min(spec.hot_skus.max(1) * 4));
        let sku = sku_name(i);
        let body = if g.chance(0.5) {
            InventoryBody::StockReceived(StockReceived {
                quantity: 1 + g.rng.random_range(0..10),
            })
        } else {
            InventoryBody::StockCounted(StockCounted {
                on_hand: g.rng.random_range(0..5),
            })
        };
        let e = InventoryEvent {
            event_id: format!("inv-{m}"),
            sku: sku.clone(),
            warehouse_id: format!("wh-{}", i % 3),
            occurred_at: at,
            body,
        };
        g.emit(
            at,
            Generated {
                topic: topics::INVENTORY,
                key: Some(sku),
                payload: Payload::Inventory(e),
            },
        );
    }
    let total = g.out.len();
    let malformed = ((total as f64) * spec.malformed_ratio).round() as usize;
    for m in 0..malformed {
        let at = g.between(start, end.max(start + 1));
        let topic = [
            topics::ORDERS,
            topics::PAYMENTS,
            topics::LOGISTICS,
            topics::INVENTORY,
        ][m % 4];
        let payload = match m % 3 {
            0 => Payload::Malformed(b"{\"not\": \"avro\"}".to_vec()),
            1 => Payload::Malformed(vec![0xC3, 0x01, 1, 2, 3]),
            _ => Payload::Order(OrderEvent {
                event_id: format!("bad-{m}"),
                order_id: format!("o-bad-{m}"),
                occurred_at: at,
                body: OrderBody::OrderPlaced(OrderPlaced {
                    user_id: "u".into(),
                    cart_id: "c".into(),
                    currency: "EUR".into(),
                    lines: vec![],
                }),
            }),
        };
        let topic = if matches!(payload, Payload::Order(_)) {
            topics::ORDERS
        } else {
            topic
        };
        g.push(
            at,
            Generated {
                topic,
                key: Some(format!("o-bad-{m}")),
                payload,
            },
        );
    }
    g.out.sort_by_key(|t| (t.publish_at, t.seq));
    g.out.into_iter().map(|t| t.record).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_log() {
        let spec = WorkloadSpec {
            orders: 300,
            ..WorkloadSpec::default()
        };
        assert_eq!(generate(&spec), generate(&spec));
        let other = WorkloadSpec {
            seed: 7,
            ..spec.clone()
        };
        assert_ne!(generate(&spec), generate(&other));
    }
}
