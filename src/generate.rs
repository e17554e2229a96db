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
    /// Of captures: paid after the deadline, when the reservation has expired.
    pub late_capture_ratio: f64,
    /// Of orders the checkout refused (a SKU was out of stock): captured all the same, by a
    /// payment service that did not wait for the reservation's answer. The rest are
    /// cancelled by the checkout at once.
    pub refused_capture_ratio: f64,
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
            refused_capture_ratio: 0.01,
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
    /// A record of the driver's topic `topic` under `key`.
    fn keyed(topic: &'static str, key: &str, payload: Payload) -> Generated {
        Generated {
            topic,
            key: Some(key.to_string()),
            payload,
        }
    }

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

/// A change to one SKU's stock that the SKU stage will apply at an instant of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    /// An ACTIVE reservation ends without a sale (expiry, payment failure, cancel).
    Release { sku: usize, quantity: i64 },
    /// A capture sells the units; `reserved` when it commits an ACTIVE reservation.
    Commit {
        sku: usize,
        quantity: i64,
        reserved: bool,
    },
    /// A paid order cancelled before shipping gives its units back.
    Restock { sku: usize, quantity: i64 },
    /// Inventory movements during the sale. A cycle count finds what the warehouse should
    /// hold less `shrink` units; its record is made when it is applied, from the stock then.
    Received {
        sku: usize,
        quantity: i64,
        event: usize,
    },
    Counted {
        sku: usize,
        shrink: i64,
        event: usize,
    },
}

impl Change {
    /// Inventory records go first among changes at the same instant, as in the SKU stage.
    fn rank(&self) -> u8 {
        match self {
            Change::Received { .. } | Change::Counted { .. } => 0,
            _ => 1,
        }
    }
}

/// One SKU's stock as the SKU stage keeps it (one warehouse per SKU in this workload).
#[derive(Debug, Clone, Copy, Default)]
struct SkuStock {
    warehouse: i64,
    net_sales: i64,
    reserved: i64,
}

impl SkuStock {
    fn available(&self) -> i64 {
        self.warehouse + self.net_sales - self.reserved
    }
}

/// The checkout's view of stock: the SKU stage's first-come-first-served decision, replayed in
/// event time, so the generator knows which orders were refused before it decides what their
/// customers and payment service do next.
struct Checkout {
    skus: Vec<SkuStock>,
    /// Changes not yet applied, by (instant, rank, order scheduled).
    due: std::collections::BinaryHeap<std::cmp::Reverse<(Millis, u8, u64, Change)>>,
    scheduled: u64,
}

impl Checkout {
    fn schedule(&mut self, at: Millis, change: Change) {
        self.scheduled += 1;
        self.due.push(std::cmp::Reverse((
            at,
            change.rank(),
            self.scheduled,
            change,
        )));
    }

    /// Reserves `quantity` of `sku` if it is available; false when the SKU stage would refuse.
    fn reserve(&mut self, sku: usize, quantity: i64) -> bool {
        let s = &mut self.skus[sku];
        if quantity <= s.available() {
            s.reserved += quantity;
            true
        } else {
            false
        }
    }
}

impl Gen {
    /// Applies every change due before a command at `until` (inventory at `until` included),
    /// emitting the inventory records whose values depend on the stock then.
    fn apply_due(&mut self, checkout: &mut Checkout, until: Millis) {
        while let Some(std::cmp::Reverse((at, rank, _, change))) = checkout.due.peek().copied() {
            if (at, rank) >= (until, 1) {
                break;
            }
            checkout.due.pop();
            let body = match change {
                Change::Release { sku, quantity } => {
                    checkout.skus[sku].reserved -= quantity;
                    None
                }
                Change::Commit {
                    sku,
                    quantity,
                    reserved,
                } => {
                    let s = &mut checkout.skus[sku];
                    if reserved {
                        s.reserved -= quantity;
                    }
                    s.net_sales -= quantity;
                    None
                }
                Change::Restock { sku, quantity } => {
                    checkout.skus[sku].net_sales += quantity;
                    None
                }
                Change::Received {
                    sku,
                    quantity,
                    event,
                } => {
                    checkout.skus[sku].warehouse += quantity;
                    Some((
                        sku,
                        event,
                        InventoryBody::StockReceived(StockReceived {
                            quantity: quantity as i32,
                        }),
                    ))
                }
                Change::Counted { sku, shrink, event } => {
                    let s = &mut checkout.skus[sku];
                    s.warehouse = (s.warehouse - shrink).max(0);
                    Some((
                        sku,
                        event,
                        InventoryBody::StockCounted(StockCounted {
                            on_hand: s.warehouse.min(i32::MAX as i64) as i32,
                        }),
                    ))
                }
            };
            if let Some((i, m, body)) = body {
                let sku = sku_name(i);
                let e = InventoryEvent {
                    event_id: format!("inv-{m}"),
                    sku: sku.clone(),
                    warehouse_id: format!("wh-{}", i % 3),
                    occurred_at: at,
                    body,
                };
                self.emit(
                    at,
                    Generated::keyed(topics::INVENTORY, &sku, Payload::Inventory(e)),
                );
            }
        }
    }
}

/// The workload for `spec`, in publish order.
///
/// The checkout behaves like one that reserves: it learns whether each order's reservations
/// were accepted (`Checkout` replays the SKU stage's decision) and only an order reserved in
/// full goes on to pay, fail or be abandoned. A refused order is cancelled by the checkout at
/// once, except for `refused_capture_ratio` of them, whose payment service captured without
/// waiting for the answer; those, and late captures of expired reservations, are the
/// oversells, as in production.
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
    let mut checkout = Checkout {
        skus: vec![SkuStock::default(); skus],
        due: Default::default(),
        scheduled: 0,
    };
    // Opening stock: hot SKUs (the most popular ranks) get a handful of units.
    for i in 0..skus {
        let qty = if i < spec.hot_skus {
            spec.hot_stock
        } else {
            spec.stock_per_sku
        }
        .max(1);
        checkout.skus[i].warehouse = qty as i64;
        let sku = sku_name(i);
        let e = InventoryEvent {
            event_id: format!("inv-open-{i}"),
            sku: sku.clone(),
            warehouse_id: format!("wh-{}", i % 3),
            occurred_at: start - 60_000 + (i as Millis % 1_000),
            body: InventoryBody::StockReceived(StockReceived { quantity: qty }),
        };
        g.push(
            e.occurred_at,
            Generated::keyed(topics::INVENTORY, &sku, Payload::Inventory(e)),
        );
    }
    let interval = (1_000 / spec.orders_per_sec.max(1) as i64).max(1);
    let end = start + spec.orders as Millis * interval;
    // Restocks and cycle counts of the popular SKUs during the sale; a count finds up to two
    // units fewer than the warehouse should hold (shrinkage), which can leave fewer units
    // than are promised.
    let movements = (spec.orders / 50).max(1);
    for m in 0..movements {
        let at = g.between(start, end.max(start + 1));
        let sku = g.rng.random_range(0..skus.min(spec.hot_skus.max(1) * 4));
        let change = if g.chance(0.5) {
            Change::Received {
                sku,
                quantity: 1 + g.rng.random_range(0..10),
                event: m,
            }
        } else {
            Change::Counted {
                sku,
                shrink: g.rng.random_range(0..3),
                event: m,
            }
        };
        checkout.schedule(at, change);
    }
    let ttl = spec.reservation_ttl_ms;
    for n in 0..spec.orders {
        let placed_at = start + n as Millis * interval + g.between(0, interval);
        let order_id = format!("o-{n:08}");
        let line_count = 1 + g.rng.random_range(0..3usize);
        let lines: Vec<(usize, OrderLine)> = (0..line_count)
            .map(|_| {
                let rank = zipf.as_ref().map_or(1.0, |z| z.sample(&mut g.rng)) as usize;
                let i = rank.clamp(1, skus) - 1;
                let line = OrderLine {
                    sku: sku_name(i),
                    quantity: 1 + g.rng.random_range(0..2),
                    unit_price_minor: 1_000 + g.rng.random_range(0..50_000),
                };
                (i, line)
            })
            .collect();
        // One reservation per (order, SKU), in first-appearance order, as the order stage sends.
        let mut per_sku: Vec<(usize, i64)> = Vec::new();
        for (i, line) in &lines {
            match per_sku.iter_mut().find(|(s, _)| s == i) {
                Some((_, q)) => *q += line.quantity as i64,
                None => per_sku.push((*i, line.quantity as i64)),
            }
        }
        g.apply_due(&mut checkout, placed_at);
        let reserved: Vec<bool> = per_sku
            .iter()
            .map(|(i, q)| checkout.reserve(*i, *q))
            .collect();
        let accepted = reserved.iter().all(|r| *r);
        let placed = OrderEvent {
            event_id: format!("{order_id}-placed"),
            order_id: order_id.clone(),
            occurred_at: placed_at,
            body: OrderBody::OrderPlaced(OrderPlaced {
                user_id: format!("u-{}", g.rng.random_range(0..100_000)),
                cart_id: format!("c-{n}"),
                currency: "EUR".into(),
                lines: lines.into_iter().map(|(_, l)| l).collect(),
            }),
        };
        let orphan = g.chance(spec.orphan_ratio);
        g.emit(
            placed_at,
            Generated::keyed(topics::ORDERS, &order_id, Payload::Order(placed)),
        );
        // What ends the order's reservations: releases of the accepted ones at `at`.
        let release_all = |c: &mut Checkout, at: Millis| {
            for ((sku, quantity), r) in per_sku.iter().zip(&reserved) {
                if *r {
                    c.schedule(
                        at,
                        Change::Release {
                            sku: *sku,
                            quantity: *quantity,
                        },
                    );
                }
            }
        };
        // A capture sells every line; `active` when the accepted reservations are still held.
        let commit_all = |c: &mut Checkout, at: Millis, active: bool| {
            for ((sku, quantity), r) in per_sku.iter().zip(&reserved) {
                c.schedule(
                    at,
                    Change::Commit {
                        sku: *sku,
                        quantity: *quantity,
                        reserved: active && *r,
                    },
                );
            }
        };
        let order_event = |event_id: String, at: Millis, body: OrderBody| OrderEvent {
            event_id,
            order_id: order_id.clone(),
            occurred_at: at,
            body,
        };
        let payment = |event_id: String, at: Millis, body: PaymentBody| PaymentEvent {
            event_id,
            order_id: order_id.clone(),
            payment_id: format!("pay-{n}"),
            occurred_at: at,
            body,
        };
        let raced = !accepted && g.chance(spec.refused_capture_ratio);
        if !accepted && !raced {
            // The checkout tells the customer the items are gone and cancels the order, which
            // releases what it did reserve.
            let at = placed_at + g.between(200, 2_000);
            release_all(&mut checkout, at);
            let e = order_event(
                format!("{order_id}-refused"),
                at,
                OrderBody::OrderCancelled(OrderCancelled {
                    reason: "out_of_stock".into(),
                }),
            );
            g.emit(
                at,
                Generated::keyed(topics::ORDERS, &order_id, Payload::Order(e)),
            );
            continue;
        }

        let roll = g.rng.random::<f64>();
        let deadline = placed_at + ttl;
        if !raced && roll < spec.abandon_ratio {
            // The cart is abandoned: the reservation expires just after its deadline.
            release_all(&mut checkout, deadline + 1);
            continue;
        }
        if !raced && roll < spec.abandon_ratio + spec.payment_failure_ratio {
            let at = placed_at + g.between(1_000, ttl / 2);
            release_all(&mut checkout, at);
            let e = payment(
                format!("{order_id}-failed"),
                at,
                PaymentBody::PaymentFailed(PaymentFailed {
                    reason: "card_declined".into(),
                }),
            );
            g.emit(
                at,
                Generated::keyed(topics::PAYMENTS, &order_id, Payload::Payment(e)),
            );
            continue;
        }
        let late = !raced && g.chance(spec.late_capture_ratio);
        let paid_at = if late {
            placed_at + ttl + g.between(1, 60_000)
        } else if orphan && !raced {
            // Published before its order: parked, then applied when the order arrives.
            placed_at - g.between(1, 1_000)
        } else {
            placed_at + g.between(1_000, ttl / 3)
        };
        if late {
            release_all(&mut checkout, deadline + 1);
        }
        commit_all(&mut checkout, paid_at.max(placed_at), !late);
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
            Generated::keyed(topics::PAYMENTS, &order_id, Payload::Payment(e)),
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
                Generated::keyed(topics::LOGISTICS, &order_id, Payload::Logistics(scan)),
            );
            at += g.between(30_000, 600_000);
        }
        if cancelled {
            let cancel_at = if cancel_before_ship {
                at - 20_000
            } else {
                at + 1_000
            };
            let cancel_at = cancel_at.max(paid_at + 1);
            if cancel_before_ship {
                // Paid and not shipped: the units go back on the shelf.
                for (sku, quantity) in &per_sku {
                    checkout.schedule(
                        cancel_at,
                        Change::Restock {
                            sku: *sku,
                            quantity: *quantity,
                        },
                    );
                }
            }
            let e = order_event(
                format!("{order_id}-cancelled"),
                cancel_at,
                OrderBody::OrderCancelled(OrderCancelled {
                    reason: "customer".into(),
                }),
            );
            g.emit(
                e.occurred_at,
                Generated::keyed(topics::ORDERS, &order_id, Payload::Order(e)),
            );
        }
    }
    // The movements after the last order still happen.
    g.apply_due(&mut checkout, Millis::MAX);
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
